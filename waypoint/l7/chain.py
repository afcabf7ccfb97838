"""Runs one request's events through the filters: request side in order, response side reversed.

A :class:`Stream` is the per-request runner (Envoy's ``FilterManager``). It is pure dispatch:
no I/O and no Task; the codec feeds it request events and the router feeds it response events,
and the codec receives what survives through a :class:`DownstreamSink`.

Stopping: when a filter returns ``STOP`` the event is parked at that filter, and every later event
of the same direction waits at the entrance (in order) until ``resume()``; the held data also
pauses the source (the downstream connection for requests, the upstream one for responses), so
memory stays bounded by one read.

Reading on while stopped: a filter that stopped on the request headers may ask for the body
(:meth:`Stream.feed_request_body`, ext_authz's ``with_request_body``). Later request events then go
through the filters before it and to its callback instead of waiting at the entrance, and are held
by the chain (Envoy's ``StopIterationAndBuffer``: the buffer continues to the next filters after
``continueDecoding``); the source is not paused, the callback decides when it has enough.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from waypoint.l7.filter import CONTINUE, STOP, Filter, LocalReply, RequestContext, Result
from waypoint.l7.flow import HELD, CorkedWriter, RelayPeer
from waypoint.l7.message import DATA, HEADERS, TRAILERS, HeaderList, ResponseHead, is_grpc

_Event = tuple[int, Any, bool]
BodyFeed = Callable[[bytes, bool], Result]
"""A stopped filter's body callback: ``STOP``/``CONTINUE`` (keep going; the chain holds the event
either way) or a :class:`LocalReply` (answer now, e.g. 413)."""


class DownstreamSink(Protocol):
    """What the chain needs from the downstream codec for one stream."""

    def send_informational(self, head: ResponseHead) -> None: ...
    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None: ...
    def send_response_data(self, chunk: bytes, end_stream: bool) -> None: ...
    def send_response_trailers(self, trailers: HeaderList) -> None: ...
    def reset(self) -> None: ...
    def pause_request_body(self, reason: int) -> None: ...
    def resume_request_body(self, reason: int) -> None: ...
    def flush_later(self, writer: CorkedWriter) -> None: ...
    def start_relay(self, upstream: RelayPeer) -> RelayPeer: ...


class FlowSource(Protocol):
    """A byte source that can be paused (the upstream connection a response comes from)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


# Envoy's HTTP→gRPC status mapping for local replies (source/common/grpc/status.cc, httpToGrpcStatus).
_GRPC_FOR_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def render_local_reply(reply: LocalReply, grpc: bool) -> tuple[ResponseHead, bytes]:
    """The head and body a local reply puts on the wire (Envoy ``sendLocalReply``): plain text, or
    for gRPC requests a trailers-only response carrying ``grpc-status`` and ``grpc-message``."""
    headers = list(reply.headers)
    if grpc:
        code = reply.grpc_status if reply.grpc_status is not None else _GRPC_FOR_HTTP.get(reply.status, 2)
        headers += [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(code).encode()),
            (b"grpc-message", reply.body),
        ]
        return ResponseHead(200, headers), b""
    if reply.body:
        # Envoy sets text/plain, then the reply's own headers override it (modify_headers runs after;
        # an ext-authz server's deny keeps its content type)
        if not any(name == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/plain"))
        headers.append((b"content-length", str(len(reply.body)).encode()))
    else:
        headers.append((b"content-length", b"0"))
    return ResponseHead(reply.status, headers), reply.body


# Callback names by event kind (``HEADERS``, ``DATA``, ``TRAILERS`` index these tuples).
_DECODERS = ("on_request_headers", "on_request_data", "on_request_trailers")
_ENCODERS = ("on_response_headers", "on_response_data", "on_response_trailers")

_Hooks = tuple[tuple[int, Any], ...]  # (filter index, bound callback), only filters that override it


def _hooks(filters: Sequence[Filter], name: str, reverse: bool = False) -> _Hooks:
    """The filters whose ``name`` callback does something, with their positions.

    A pass-through default (``Filter``'s, which returns ``CONTINUE``) is skipped: calling it is
    behaviour-free, and with three filters and three events each way it was nine calls a request."""
    default = getattr(Filter, name)
    found = [
        (i, getattr(f, name))
        for i, f in enumerate(filters)
        if getattr(getattr(f, name), "__func__", None) is not default
    ]
    return tuple(reversed(found)) if reverse else tuple(found)


class Stream:
    """One request/response exchange through a filter list whose last member is the router."""

    __slots__ = (
        "_chain",
        "_held_from",
        "_local",
        "_req_feed",
        "_req_held",
        "_req_queue",
        "_req_stop",
        "_resp_queue",
        "_resp_stop",
        "_resp_top",
        "_sent_headers",
        "ctx",
        "done",
        "response_flow",
        "sink",
    )

    def __init__(self, chain: FilterChain, ctx: RequestContext, sink: DownstreamSink) -> None:
        self._chain = chain
        self.ctx = ctx
        self.sink = sink
        ctx.stream = self
        self._req_stop: tuple[int, _Event] | None = None
        self._req_queue: deque[_Event] | None = None  # made when an event first has to wait
        self._req_feed: BodyFeed | None = None  # the stopped filter's body callback, while it reads on
        self._req_held: deque[_Event] | None = None  # events fed to it, to go on after it resumes
        self._held_from = 0  # the filter index those held events continue from
        self._resp_stop: tuple[int, _Event] | None = None
        self._resp_queue: deque[_Event] | None = None
        self._resp_top = chain.response_top  # response events enter just above the router
        self._local = False  # a local reply replaced the response: ignore the router's events
        self._sent_headers = False
        self.response_flow: FlowSource | None = None
        self.done = False

    # ---- request side (from the codec) ----
    # headers and data are ``_decode`` written out: one Python frame less on every event
    def decode_headers(self, head: Any, end_stream: bool) -> None:
        if self._local or self.done:
            return
        if self._req_stop is not None or self._req_queue:
            self._decode((HEADERS, head, end_stream))
        else:
            self._decode_from(0, (HEADERS, head, end_stream))

    def decode_data(self, chunk: bytes, end_stream: bool) -> None:
        self.ctx.request_bytes += len(chunk)  # Envoy's BYTES_RECEIVED: what the client sent
        if self._local or self.done:
            return
        if self._req_stop is not None or self._req_queue:
            self._decode((DATA, chunk, end_stream))
        else:
            self._decode_from(0, (DATA, chunk, end_stream))

    def decode_trailers(self, trailers: HeaderList) -> None:
        self._decode((TRAILERS, trailers, True))

    def _decode(self, ev: _Event) -> None:
        if self._local or self.done:
            return  # the request was answered locally: the rest of its body is dropped
        if self._req_feed is not None and self._req_stop is not None:
            self._feed(ev)
            return
        if self._req_stop is not None or self._req_queue:
            if self._req_queue is None:
                self._req_queue = deque()
            self._req_queue.append(ev)
            self.sink.pause_request_body(HELD)
            return
        self._decode_from(0, ev)

    def _decode_from(self, i: int, ev: _Event) -> None:
        kind, payload, end = ev
        ctx = self.ctx
        r: Result
        for j, callback in self._chain.decoders[kind]:
            if j < i:
                continue
            r = callback(ctx, payload) if kind == TRAILERS else callback(ctx, payload, end)
            if r is CONTINUE:
                continue
            if r is STOP:
                self._req_stop = (j, ev)
            else:
                self._local_reply(r, j)  # type: ignore[arg-type]
            return

    def feed_request_body(self, callback: BodyFeed | None) -> None:
        """Hand the body to a filter stopped on the request headers as it comes (``callback(chunk,
        end_stream)``; trailers come as ``(b"", True)``), or stop doing so (None: later events wait at
        the entrance again, and the source pauses). Call it from ``on_request_headers`` before
        returning ``STOP``, or later from the stopped filter."""
        if callback is not None and (self._req_queue or self._req_held):
            raise RuntimeError("feed_request_body: events already wait behind this stop")
        self._req_feed = callback

    def _feed(self, ev: _Event) -> None:
        """A request event while the stopped filter reads on: through the filters before it, to its
        callback, then held for after the stop (Envoy decodes data through a filter that stopped on
        headers, and buffers what it returns StopIterationAndBuffer for)."""
        assert self._req_stop is not None and self._req_feed is not None
        stopped = self._req_stop[0]
        kind, payload, end = ev
        ctx = self.ctx
        r: Result
        for j, callback in self._chain.decoders[kind]:
            if j >= stopped:
                break
            r = callback(ctx, payload) if kind == TRAILERS else callback(ctx, payload, end)
            if isinstance(r, LocalReply):
                self._local_reply(r, j)
                return
        held = self._req_held
        if held is None:
            held = self._req_held = deque()
        if not held:
            self._held_from = stopped + 1
        held.append(ev)
        r = self._req_feed(b"", True) if kind == TRAILERS else self._req_feed(payload, end)
        if isinstance(r, LocalReply):
            self._local_reply(r, stopped)

    # ---- response side (from the router) ----
    def encode_headers(self, head: ResponseHead, end_stream: bool) -> None:
        if self._local:
            return
        self.ctx.response = head
        if self.done:
            return
        if self._resp_stop is not None or self._resp_queue:
            self._encode((HEADERS, head, end_stream))
        else:
            self._encode_from(self._resp_top, (HEADERS, head, end_stream))

    def encode_data(self, chunk: bytes, end_stream: bool) -> None:
        if self._local or self.done:
            return
        self.ctx.response_bytes += len(chunk)  # Envoy's BYTES_SENT (a local reply sets its own below)
        if self._resp_stop is not None or self._resp_queue:
            self._encode((DATA, chunk, end_stream))
        else:
            self._encode_from(self._resp_top, (DATA, chunk, end_stream))

    def encode_trailers(self, trailers: HeaderList) -> None:
        if not self._local:
            self._encode((TRAILERS, trailers, True))

    def encode_informational(self, head: ResponseHead) -> None:
        """1xx (``100 Continue``) goes straight to the codec, as Envoy's ``encode1xxHeaders`` default."""
        if not self._local and not self._sent_headers:
            self.sink.send_informational(head)

    def _encode(self, ev: _Event) -> None:
        if self.done:
            return
        if self._resp_stop is not None or self._resp_queue:
            if self._resp_queue is None:
                self._resp_queue = deque()
            self._resp_queue.append(ev)
            if self.response_flow is not None:
                self.response_flow.pause_reading()
            return
        self._encode_from(self._resp_top, ev)

    def _encode_from(self, i: int, ev: _Event) -> None:
        kind, payload, end = ev
        ctx = self.ctx
        r: Result
        for j, callback in self._chain.encoders[kind]:  # highest index first
            if j > i:
                continue
            r = callback(ctx, payload) if kind == TRAILERS else callback(ctx, payload, end)
            if r is CONTINUE:
                continue
            if r is STOP:
                self._resp_stop = (j, ev)
            else:
                self._local_reply(r, j)  # type: ignore[arg-type]
            return
        sink = self.sink
        if kind == DATA:
            sink.send_response_data(payload, end)
        elif kind == HEADERS:
            self._sent_headers = True
            sink.send_response_headers(payload, end)
        else:
            sink.send_response_trailers(payload)

    # ---- resuming and answering ----
    def resume(self) -> None:
        """Continue whichever direction is stopped, then drain what waited at its entrance."""
        if self.done:
            return
        if self._req_stop is not None:
            j, ev = self._req_stop
            self._req_stop = None
            self._req_feed = None
            self._decode_from(j + 1, ev)
            held = self._req_held
            while self._req_stop is None and held and not self._local:
                self._decode_from(self._held_from, held.popleft())
            queue = self._req_queue
            while self._req_stop is None and queue and not self._local:
                self._decode_from(0, queue.popleft())
            if not queue:
                self.sink.resume_request_body(HELD)
        elif self._resp_stop is not None:
            j, ev = self._resp_stop
            self._resp_stop = None
            self._encode_from(j - 1, ev)
            queue = self._resp_queue
            while self._resp_stop is None and queue and not self.done:
                self._encode_from(self._resp_top, queue.popleft())
            if not queue and self.response_flow is not None:
                self.response_flow.resume_reading()

    def reply_from_router(self, reply: LocalReply) -> None:
        """The router answers (503 no healthy upstream, 504 timeout): through every response filter."""
        self._local_reply(reply, len(self._chain.filters) - 1)

    def local_reply_from_resumer(self, reply: LocalReply) -> None:
        """A filter that stopped answers instead of resuming (ext_authz deny)."""
        if self._req_stop is not None:
            index = self._req_stop[0]
        elif self._resp_stop is not None:
            index = self._resp_stop[0]
        else:
            index = len(self._chain.filters) - 1
        self._local_reply(reply, index)

    def _local_reply(self, reply: LocalReply, index: int) -> None:
        """Answer through the response filters of the filters before ``index`` (those that saw the request)."""
        if self.done:
            return
        self.ctx.response_code_details = reply.details  # for the access log (Envoy's response code details)
        if self._sent_headers:
            self.reset()  # too late to change the status: Envoy resets the stream
            return
        self._local = True
        self._req_stop = None
        self._req_feed = None
        if self._req_queue:
            self._req_queue.clear()
        if self._req_held:
            self._req_held.clear()
        self._resp_stop = None
        if self._resp_queue:
            self._resp_queue.clear()
        self.sink.resume_request_body(HELD)
        head, body = render_local_reply(reply, is_grpc(self.ctx.request.headers))
        self.ctx.response = head
        self.ctx.response_bytes = len(body)
        self._resp_top = index - 1
        self._encode_from(index - 1, (HEADERS, head, not body))
        if body:
            ev = (DATA, body, True)
            if self._resp_stop is not None:
                if self._resp_queue is None:
                    self._resp_queue = deque()
                self._resp_queue.append(ev)
            else:
                self._encode_from(index - 1, ev)

    @property
    def response_started(self) -> bool:
        return self._sent_headers

    # ---- end of life (called by the codec) ----
    def complete(self) -> None:
        """Both directions finished (or the stream was reset): tell every filter once."""
        if self.done:
            return
        self.done = True
        ctx = self.ctx
        for callback in self._chain.completers:
            callback(ctx)
        # The context, this stream and the router's exchange refer to each other: cut the links
        # so reference counting frees the request now, not a later cyclic garbage collection.
        ctx.stream = None
        ctx.upstream = None

    def reset(self) -> None:
        """Abort: the codec drops the stream (HTTP/1.1: closes the connection)."""
        if self.done:
            return
        self.sink.reset()
        self.complete()


class FilterChain:
    """A configured filter list, router last. ``new_stream`` is the per-request entry.

    Which filters act on which event is worked out here once (``_hooks``), not per request."""

    __slots__ = ("completers", "decoders", "encoders", "filters", "response_top")

    def __init__(self, filters: Sequence[Filter], router: Filter) -> None:
        self.filters: tuple[Filter, ...] = (*filters, router)
        every = self.filters
        self.decoders: tuple[_Hooks, ...] = tuple(_hooks(every, name) for name in _DECODERS)
        self.encoders: tuple[_Hooks, ...] = tuple(_hooks(every, name, reverse=True) for name in _ENCODERS)
        self.completers: tuple[Any, ...] = tuple(cb for _, cb in _hooks(every, "on_stream_complete"))
        self.response_top = len(every) - 2

    def new_stream(self, ctx: RequestContext, sink: DownstreamSink) -> Stream:
        return Stream(self, ctx, sink)
