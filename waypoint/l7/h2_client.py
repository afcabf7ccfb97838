"""HTTP/2 (h2c, gRPC) toward an endpoint: one multiplexed connection carries many exchanges.

The router's ``UpstreamExchange`` drives an HTTP/1.1 connection through a small surface
(``send_request_head/data/trailers``, ``close``, ``pause_reading``; a ``ResponseHandler`` gets the
answer). :class:`H2UpstreamStream` offers that same surface for *one HTTP/2 stream*, so the
exchange needs no HTTP/2 knowledge: ``close()`` resets that stream only, ``pause_reading()``
withholds that stream's WINDOW_UPDATEs, and a reset of one stream never touches the others.
``waypoint.l7.h2_pool`` hands out streams on shared connections.

``active`` counts the streams handed out and not yet released (reserved before the HEADERS
leave, so concurrent takers never exceed the limit); a connection that received GOAWAY takes no
new stream and closes when its last one is released.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from waypoint.l7 import h2_fast as w
from waypoint.l7 import h2_session as hs
from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.h1_client import ResponseHandler
from waypoint.l7.h2_server import OUT_HIGH, OUT_LOW, SessionWriter
from waypoint.l7.message import HeaderList, RequestHead, ResponseHead, is_grpc

_TE_TRAILERS = (b"te", b"trailers")  # gRPC servers require it (gRPC over HTTP/2 spec, "Requests")


def request_headers(head: RequestHead) -> hs.RawHeaders:
    """Pseudo-headers first (RFC 9113 §8.3.1), then the message's headers, hop-by-hop free already."""
    headers = [
        (b":method", head.method.encode("latin-1")),
        (b":scheme", head.scheme.encode("latin-1")),
        (b":authority", head.authority.encode("latin-1")),
        (b":path", head.path.encode("latin-1")),
        *head.headers,
    ]
    if is_grpc(head.headers):
        headers.append(_TE_TRAILERS)
    return headers


class H2UpstreamStream:
    """One request on a shared HTTP/2 connection, shaped like ``Http1Connection`` for the exchange."""

    __slots__ = (
        "conn",
        "end_pending",
        "finished",
        "handler",
        "key",
        "out",
        "out_paused",
        "paused",
        "queued",
        "request_done",
        "response_done",
        "sid",
        "started",
        "trailers_pending",
        "unacked",
    )

    requests = 1

    def __init__(self, conn: H2ClientConnection) -> None:
        self.conn = conn
        self.key = conn.key
        self.handler: ResponseHandler | None = None
        self.sid = 0
        self.started = False
        self.request_done = False
        self.response_done = False
        self.finished = False  # released or reset: the pool's capacity is given back
        self.paused = False
        self.unacked = 0
        self.out: deque[bytes | memoryview] = deque()
        self.queued = 0
        self.out_paused = False
        self.end_pending = False
        self.trailers_pending: HeaderList | None = None

    @property
    def writer(self) -> CorkedWriter | None:
        return self.conn.writer

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.conn.transport

    @property
    def closed(self) -> bool:
        return self.finished or self.conn.closed

    @property
    def reusable(self) -> bool:
        return False  # a stream is used once; the connection is what the pool shares

    # ---- request side ----
    def send_request_head(self, handler: ResponseHandler, head: RequestHead, end_stream: bool) -> None:
        self.handler = handler
        self.request_done = end_stream
        conn = self.conn
        try:
            self.sid = conn.session.open_stream(request_headers(head), end_stream)
        except hs.H2ProtocolError as exc:
            # the caller is mid-attach: report on the next turn, as a failed connection would
            conn.loop.call_soon(self._fail, True, f"remote refused stream reset ({exc})")
            return
        conn.streams[self.sid] = self
        conn.writer.kick()

    def send_request_data(self, chunk: bytes, end_stream: bool) -> None:
        if not self.sid or self.finished:
            return
        session = self.conn.session
        if chunk:
            self.queued += hs.send_or_queue(session, self.sid, chunk, self.out)
            if self.queued > OUT_HIGH and not self.out_paused and self.handler is not None:
                self.out_paused = True
                self.handler.on_upstream_writable(False)
        if end_stream:
            self.request_done = True
            if self.out:
                self.end_pending = True
            else:
                with contextlib.suppress(hs.H2ProtocolError):
                    session.end_stream(self.sid)
        self.conn.writer.kick()

    def send_request_trailers(self, trailers: HeaderList) -> None:
        if not self.sid or self.finished:
            return
        self.request_done = True
        if self.out:
            self.trailers_pending = trailers
            return
        with contextlib.suppress(hs.H2ProtocolError):
            self.conn.session.send_headers(self.sid, trailers, True)
        self.conn.writer.kick()

    def drain(self) -> None:
        """Send what waited for the peer's window, then the end or trailers queued behind it."""
        if self.finished:
            return
        session = self.conn.session
        self.queued -= hs.send_queued(session, self.sid, self.out)
        if self.out_paused and self.queued < OUT_LOW:
            self.out_paused = False
            if self.handler is not None:
                self.handler.on_upstream_writable(True)
        if not self.out:
            with contextlib.suppress(hs.H2ProtocolError):
                if self.trailers_pending is not None:
                    trailers, self.trailers_pending = self.trailers_pending, None
                    session.send_headers(self.sid, trailers, True)
                elif self.end_pending:
                    self.end_pending = False
                    session.end_stream(self.sid)
        self.conn.writer.kick()

    # ---- response flow control (the chain pauses us while a response filter holds data) ----
    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.unacked and not self.finished:
            n, self.unacked = self.unacked, 0
            self.conn.session.consumed(self.sid, n)
            self.conn.writer.kick()

    # ---- ownership ----
    def detach(self) -> None:
        self.handler = None

    def close(self) -> None:
        """Abandon this exchange: RST_STREAM(CANCEL) if the stream is still open; others go on."""
        self.handler = None
        if not self.finished and self.sid and not (self.request_done and self.response_done):
            self.conn.session.reset(self.sid, w.CANCEL)
            self.conn.writer.kick()
        self.conn.release(self)

    def release(self) -> None:
        """The exchange is done: a stream still sending (response ended first) is cancelled."""
        if not self.request_done or self.out:
            self.close()
            return
        self.handler = None
        self.conn.release(self)

    def start_relay(self, peer: RelayPeer) -> None:
        raise NotImplementedError("protocol upgrades over upstream HTTP/2")

    # ---- events from the connection ----
    def _fail(self, before_headers: bool, reason: str) -> None:
        handler = self.handler
        self.handler = None
        self.conn.release(self)
        if handler is not None and not self.response_done:
            handler.on_upstream_reset(before_headers, reason)


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint; its streams are :class:`H2UpstreamStream`."""

    def __init__(
        self,
        key: object,
        on_close: Callable[[H2ClientConnection], None] | None = None,
        settings: hs.H2Settings | None = None,
        max_streams: int = 1024,
    ) -> None:
        self.key = key
        self._on_close = on_close
        self._settings = settings
        self._max_streams = max_streams
        self.loop = asyncio.get_running_loop()
        self.session = hs.H2Session(client_side=True, settings=settings)
        self.transport: asyncio.Transport | None = None
        self.writer: SessionWriter = None  # type: ignore[assignment]
        self.streams: dict[int, H2UpstreamStream] = {}
        self.active = 0
        self.closed = False
        self._corked: list[CorkedWriter] = []

    @property
    def has_capacity(self) -> bool:
        limit = min(self.session.max_outbound_streams, self._max_streams)
        return not self.closed and not self.session.closing and self.active < limit

    def new_stream(self) -> H2UpstreamStream:
        self.active += 1
        return H2UpstreamStream(self)

    def release(self, st: H2UpstreamStream) -> None:
        if st.finished:
            return
        st.finished = True
        self.active -= 1
        if st.sid:
            self.streams.pop(st.sid, None)
        if self.session.closing and not self.active:
            self.close()

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writer = SessionWriter(transport, self.session)
        self.writer.flush()  # preface and SETTINGS

    def data_received(self, data: bytes) -> None:
        writer = self.writer
        writer.cork()
        try:
            for ev in self.session.receive_data(data):
                self._dispatch(ev)
        finally:
            corked, self._corked = self._corked, []
            for w in corked:
                w.uncork()
            writer.uncork()
        if self.session.dead:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = "connection termination" if exc is None else f"connection failure ({exc})"
        for st in list(self.streams.values()):
            st._fail(not st.started, reason)
        self.streams.clear()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        for st in list(self.streams.values()):
            if st.handler is not None:
                st.handler.on_upstream_writable(False)

    def resume_writing(self) -> None:
        for st in list(self.streams.values()):
            if st.handler is not None and not st.out_paused:
                st.handler.on_upstream_writable(True)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.writer.flush()
            self.transport.close()

    # ---- events ----
    def _handler(self, sid: int) -> tuple[H2UpstreamStream | None, ResponseHandler | None]:
        st = self.streams.get(sid)
        if st is None or st.handler is None:
            return st, None
        handler = st.handler
        peer = handler.downstream_writer
        if peer is not None and peer not in self._corked:
            peer.cork()  # the downstream's share of this read leaves in one write
            self._corked.append(peer)
        return st, handler

    def _dispatch(self, ev: hs.H2Event) -> None:
        t = type(ev)
        if t is hs.DataReceived:
            self._on_data(ev.stream_id, ev.data)  # type: ignore[union-attr]
        elif t is hs.HeadersReceived:
            st, handler = self._handler(ev.stream_id)  # type: ignore[union-attr]
            if st is not None:
                st.started = True
                st.response_done = ev.end_stream  # type: ignore[union-attr]
                if handler is not None:
                    handler.on_response_headers(response_head(ev.headers), ev.end_stream)  # type: ignore[union-attr]
        elif t is hs.StreamEnded:
            st, handler = self._handler(ev.stream_id)  # type: ignore[union-attr]
            if st is not None and not st.response_done:
                st.response_done = True
                if handler is not None:
                    handler.on_response_data(b"", True)
        elif t is hs.TrailersReceived:
            st, handler = self._handler(ev.stream_id)  # type: ignore[union-attr]
            if st is not None and not st.response_done:
                st.response_done = True
                if handler is not None:
                    handler.on_response_trailers(ev.headers)  # type: ignore[union-attr]
        elif t is hs.InformationalReceived:
            st, handler = self._handler(ev.stream_id)  # type: ignore[union-attr]
            if handler is not None:
                handler.on_informational(response_head(ev.headers))  # type: ignore[union-attr]
        elif t is hs.WindowOpened:
            self._window_opened(ev.stream_id)  # type: ignore[union-attr]
        elif t is hs.StreamReset:
            self._on_reset(ev.stream_id, ev.code)  # type: ignore[union-attr]
        elif t is hs.ConnectionClosed and (self.session.dead or not self.active):
            self.close()  # GOAWAY with nothing in flight, or a connection error

    def _on_data(self, sid: int, data: memoryview) -> None:
        n = len(data)
        st, handler = self._handler(sid)
        if handler is None or st is None:
            self.session.consumed(sid, n)
            return
        handler.on_response_data(bytes(data), False)
        if st.paused and not st.finished:
            st.unacked += n
        else:
            self.session.consumed(sid, n)

    def _window_opened(self, sid: int) -> None:
        if sid:
            st = self.streams.get(sid)
            if st is not None and st.out:
                st.drain()
            return
        for st in list(self.streams.values()):
            if st.out:
                st.drain()

    def _on_reset(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        # Envoy's reset reasons as its router words them (source/common/router/router.cc)
        reason = "remote refused stream reset" if code == w.REFUSED_STREAM else "remote reset"
        st._fail(not st.started, reason)


def response_head(raw: Any) -> ResponseHead:
    status = 0
    headers: HeaderList = []
    for name, value in raw:
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        elif name[:1] != b":":
            headers.append((name, value))
    return ResponseHead(status or 502, headers)
