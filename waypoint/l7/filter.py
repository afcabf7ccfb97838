"""The HTTP filter contract, after Envoy's ``envoy/http/filter.h`` and ``pass_through_filter.h``.

Request callbacks run in configured order, response callbacks in reverse, and the router is the
last, terminal filter (Envoy ``docs/root/intro/arch_overview/http/http_filters.rst``, "Filter
ordering"). A callback returns ``CONTINUE`` (pass the event on), ``STOP`` (hold this event and every
later one of the same direction until the filter calls ``ctx.resume()``: ext_authz's pattern) or a
:class:`LocalReply` value (answer now; Envoy's ``sendLocalReply``), never raises to reject.

Filters are shared by every request; per-request state lives on the :class:`RequestContext`
(``ctx.state``), as starlette middleware is stateless across requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from waypoint.l7.message import HeaderList, RequestHead, ResponseHead, get_header
from waypoint.l7.routing.decision import RequestView, RouteDecision, ServiceRef

if TYPE_CHECKING:
    from waypoint.l7.chain import Stream


class FilterStatus(Enum):
    CONTINUE = "continue"
    STOP = "stop"


CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP


@dataclass(frozen=True, slots=True)
class LocalReply:
    """Answer the request from the proxy (Envoy ``sendLocalReply(code, body, modify_headers,
    grpc_status, details)``). ``details`` is for logs (Envoy's response code details), not the wire."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    grpc_status: int | None = None
    details: str = ""


Result = FilterStatus | LocalReply


class Filter:
    """Pass-through defaults: a filter overrides only the callbacks it needs."""

    name = "filter"

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        return CONTINUE

    def on_request_data(self, ctx: RequestContext, chunk: bytes, end_stream: bool) -> Result:
        return CONTINUE

    def on_request_trailers(self, ctx: RequestContext, trailers: HeaderList) -> Result:
        return CONTINUE

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        return CONTINUE

    def on_response_data(self, ctx: RequestContext, chunk: bytes, end_stream: bool) -> Result:
        return CONTINUE

    def on_response_trailers(self, ctx: RequestContext, trailers: HeaderList) -> Result:
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        """Called once when the stream ends, completed or reset (Envoy ``onDestroy``)."""


@dataclass(frozen=True, slots=True)
class DownstreamInfo:
    """Who is on the other end of a downstream connection, fixed for its lifetime.

    Plain TCP: the peer address. Inside HBONE: the tunnel's verified peer identity, the
    original destination from ``:authority`` and the service it belongs to.
    """

    peer_address: tuple[str, int] | None = None
    peer_identity: str | None = None  # SPIFFE ID of the downstream workload, None if not mTLS
    dialled: ServiceRef | None = None  # the service whose VIP the client dialled
    destination: tuple[str, int] | None = None  # original destination (HBONE :authority)
    source_namespace: str | None = None  # the client workload's namespace (consumer routes apply by it)
    scheme: str = "http"
    http2: bool = False  # the downstream speaks HTTP/2 (an AUTO upstream follows it, as Envoy's
    # ``use_downstream_protocol_config``)
    # For telemetry's peer labels (Istio's waypoint reads them from workload discovery by address):
    # the client's workload (mesh model), and the pod dialled when no service was; None if unknown.
    source_workload: Any = field(default=None, compare=False, repr=False)
    destination_workload: Any = field(default=None, compare=False, repr=False)
    # the peer's IP as ``x-forwarded-for`` appends it: encoded once per connection, not per request
    peer_ip: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        peer = self.peer_address
        object.__setattr__(self, "peer_ip", peer[0].encode() if peer is not None else None)


class RequestContext:
    """Everything a filter may want to know about one request, plus its per-filter state."""

    __slots__ = (
        "_state",
        "_view",
        "authority",
        "info",
        "request",
        "request_bytes",
        "request_id",
        "response",
        "response_bytes",
        "response_code_details",
        "response_flags",
        "route",
        "started_at",
        "stream",
        "upstream",
    )

    def __init__(self, info: DownstreamInfo, request: RequestHead, started_at: float) -> None:
        self.info = info
        self.request = request
        self.authority = request.authority
        self.request_id: str | None = None
        self.route: RouteDecision | None = None
        self.response: ResponseHead | None = None
        # Envoy's response flags for this request (``UH``, ``UF``, ``UT``, ``URX``, ``DC``; "-" none),
        # set where the router decides them: read by telemetry, as Envoy's ``%RESPONSE_FLAGS%``.
        self.response_flags = "-"
        # Envoy's %RESPONSE_CODE_DETAILS% of a local reply (``LocalReply.details``, set by the chain);
        # "" for a response from upstream (the access log prints ``via_upstream`` then)
        self.response_code_details = ""
        self.request_bytes = 0  # body bytes each way, counted by the chain (Stream.decode_data / encode_data)
        self.response_bytes = 0
        self.started_at = started_at
        self._state: dict[str, Any] | None = None  # made on first use: most requests need none
        self.stream: Stream | None = None
        self.upstream: Any = None  # the router's per-request upstream exchange
        self._view: RequestView | None = None

    @property
    def state(self) -> dict[str, Any]:
        """Per-filter state of this request, keyed by whatever the filter chooses."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @property
    def peer_identity(self) -> str | None:
        return self.info.peer_identity

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self.info.peer_address

    @property
    def dialled(self) -> ServiceRef | None:
        return self.info.dialled

    def view(self) -> RequestView:
        """The request as routing and policy read it: built once, from the head as it is then;
        its headers stay bytes until a reader asks for one (``RequestView.header``)."""
        view = self._view
        if view is None:
            head = self.request
            info = self.info
            ct = get_header(head.headers, b"content-type")
            view = self._view = RequestView(
                head.method,
                head.path,
                head.authority,
                (),
                info.dialled,
                ct is not None and ct.startswith(b"application/grpc"),
                info.source_namespace,
                raw_headers=tuple(head.headers),  # a snapshot, as before: later filters edit the list
            )
        return view

    def resume(self) -> None:
        """Continue the direction a filter stopped (Envoy ``continueDecoding``/``continueEncoding``)."""
        if self.stream is not None:
            self.stream.resume()

    def send_local_reply(self, reply: LocalReply) -> None:
        """Answer now, from a filter that stopped and decided later (ext_authz deny)."""
        if self.stream is not None:
            self.stream.local_reply_from_resumer(reply)
