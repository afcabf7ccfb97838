"""Where the router sends a request, the seam that opens connections there, and what a pooled
connection offers the request that holds it.

``Connector`` is the one I/O seam upstream: in production it opens an HBONE tunnel to the endpoint
pod through the pool (``waypoint/hbone``); :class:`TcpConnector` dials plain TCP (tests, and
endpoints outside the mesh). Either way the result is an ``asyncio.Transport`` driving our protocol.

:class:`UpstreamConnection` is the face the exchange, the mirror and the pool see of one request's
way to the endpoint: an HTTP/1.1 connection (``h1_client.Http1Connection``) or one stream on a
shared HTTP/2 connection (``h2_client.H2UpstreamStream``). What the endpoint answers goes to the
:class:`ResponseHandler` given with the request head.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol, TypeVar

from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.message import HeaderList, RequestHead, ResponseHead
from waypoint.l7.routing.decision import ServiceRef


class UpstreamProtocol(Enum):
    """The application protocol spoken to the endpoint (Istio's port ``appProtocol``)."""

    HTTP1 = "http/1.1"
    HTTP2 = "h2c"
    AUTO = "auto"  # whatever the downstream speaks: Istio's choice for ports of undeclared protocol


def following(target: UpstreamTarget, http2: bool) -> UpstreamTarget:
    """``target`` with an AUTO protocol resolved to the downstream's (Envoy's use_downstream_protocol)."""
    resolved = target.resolved
    return target if resolved is None else resolved[http2]


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One endpoint of a service: the address to dial and what to speak there."""

    address: str
    port: int
    service: ServiceRef | None = None
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    identity: str | None = None  # the endpoint's SPIFFE ID, for the HBONE connector's SAN check
    # the endpoint's workload (mesh model), for telemetry's destination labels; not part of equality
    workload: Any = field(default=None, compare=False, repr=False)
    # What pooled connections are shared by: same endpoint, same protocol.
    key: tuple[str, int, UpstreamProtocol] = field(init=False, repr=False, compare=False)
    # AUTO only: the HTTP/1.1 and HTTP/2 forms, made once here rather than per request by ``following``.
    resolved: tuple[UpstreamTarget, UpstreamTarget] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port, self.protocol))
        resolved = None
        if self.protocol is UpstreamProtocol.AUTO:
            resolved = (replace(self, protocol=UpstreamProtocol.HTTP1), replace(self, protocol=UpstreamProtocol.HTTP2))
        object.__setattr__(self, "resolved", resolved)


class ResponseHandler(Protocol):
    """Receives what the endpoint answers to the request in flight."""

    def on_informational(self, head: ResponseHead) -> None: ...
    def on_response_headers(self, head: ResponseHead, end_stream: bool) -> None: ...
    def on_response_data(self, chunk: bytes, end_stream: bool) -> None: ...
    def on_response_trailers(self, trailers: HeaderList) -> None: ...
    def on_upgraded(self, head: ResponseHead, upstream: RelayPeer, rest: bytes) -> None:
        """``101``: ``upstream`` is the connection's end of the byte relay; ``rest`` came after the head."""

    def on_upstream_reset(self, before_headers: bool, reason: str) -> None: ...
    def on_upstream_writable(self, writable: bool) -> None: ...

    @property
    def downstream_writer(self) -> CorkedWriter | None:
        """Corked while a read from the endpoint is parsed, so one read leaves in one write."""


class UpstreamConnection(Protocol):
    """One request's way to an endpoint, owned by one exchange from ``send_request_head`` until
    the pool takes it back (``release``) or the exchange closes it."""

    @property
    def key(self) -> object:
        """What the pool files it under (``UpstreamTarget.key``)."""

    @property
    def writer(self) -> CorkedWriter | None:
        """Corked by the exchange so a request's head and body leave in one write."""

    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def reusable(self) -> bool:
        """The pool may give it to another request (the last one completed cleanly both ways)."""

    def send_request_head(self, handler: ResponseHandler, head: RequestHead, end_stream: bool) -> None: ...
    def send_request_data(self, chunk: bytes, end_stream: bool) -> None: ...
    def send_request_trailers(self, trailers: HeaderList) -> None: ...
    def pause_reading(self) -> None:
        """Stop reading the response while a response filter holds data (the chain's ``FlowSource``)."""

    def resume_reading(self) -> None: ...
    def start_relay(self, peer: RelayPeer) -> None:
        """After ``101``: bytes from the endpoint go to ``peer`` unparsed."""

    def detach(self) -> None:
        """The exchange is done with it: forget the handler (and resume reading) before pooling."""

    def close(self) -> None: ...


P = TypeVar("P", bound=asyncio.BaseProtocol)


class Connector(Protocol):
    """Opens a byte stream to ``target`` driven by ``protocol_factory()``; raises ``OSError`` on failure."""

    async def connect(
        self, target: UpstreamTarget, protocol_factory: Callable[[], P]
    ) -> tuple[asyncio.Transport, P]: ...


class TcpConnector:
    """Plain TCP with TCP_NODELAY (uvloop and asyncio set it by default for TCP)."""

    def __init__(self, local_address: str | None = None) -> None:
        self._local = (local_address, 0) if local_address else None

    async def connect(self, target: UpstreamTarget, protocol_factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(
            protocol_factory, target.address, target.port, local_addr=self._local
        )
        return transport, protocol
