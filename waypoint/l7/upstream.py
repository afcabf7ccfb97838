"""Where the router sends a request, and the seam that opens connections there.

``Connector`` is the one I/O seam upstream: in production it opens an HBONE tunnel to the endpoint
pod through the pool (``waypoint/hbone``); :class:`TcpConnector` dials plain TCP (tests, and
endpoints outside the mesh). Either way the result is an ``asyncio.Transport`` driving our protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from waypoint.l7.routing.decision import ServiceRef


class UpstreamProtocol(Enum):
    """The application protocol spoken to the endpoint (Istio's port ``appProtocol``)."""

    HTTP1 = "http/1.1"
    HTTP2 = "h2c"


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One endpoint of a service: the address to dial and what to speak there."""

    address: str
    port: int
    service: ServiceRef | None = None
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    identity: str | None = None  # the endpoint's SPIFFE ID, for the HBONE connector's SAN check

    @property
    def key(self) -> tuple[str, int, UpstreamProtocol]:
        """What pooled connections are shared by: same endpoint, same protocol."""
        return (self.address, self.port, self.protocol)


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
        return transport, protocol  # type: ignore[return-value]
