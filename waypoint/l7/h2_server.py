"""HTTP/2 with prior knowledge toward the client: the downstream codec, an ``asyncio.Protocol``.

Like ``h1_server`` it runs over a TCP socket in tests and over an HBONE tunnel stream in
production. Each HTTP/2 stream is one chain :class:`~waypoint.l7.chain.Stream`, with a
:class:`_DownStream` as its :class:`~waypoint.l7.chain.DownstreamSink`; nothing per request creates
a Task. Receive flow control follows consumption: bytes handed to the chain are granted back to
the client only while the chain is not pausing that stream, so a held or slow request body pins at
most one stream window. Output of a whole read (every stream) leaves in one write; output produced
between reads (upstream responses) is flushed once per loop turn.

A malformed request resets only its stream (RFC 9113 §8.1.1); a connection error GOAWAYs.
Local replies to gRPC requests are trailers-only responses, rendered by the chain
(``chain.render_local_reply``, Envoy's ``httpToGrpcStatus`` mapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from waypoint.l7 import h2_fast as w
from waypoint.l7 import h2_session as hs
from waypoint.l7.chain import FilterChain, Stream
from waypoint.l7.filter import DownstreamInfo, RequestContext
from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.message import HOP_BY_HOP, HeaderList, RequestHead, ResponseHead

_STATUS = {code: str(code).encode() for code in range(100, 600)}
OUT_HIGH = 256 * 1024  # bytes queued for a stream's send window before its source is paused
OUT_LOW = 64 * 1024


class SessionWriter(CorkedWriter):
    """Flushes an :class:`~waypoint.l7.h2_session.H2Session` at most once per loop turn.

    It is a ``CorkedWriter`` so that codecs which cork the peer's writer for one read (``exchange``,
    ``h1_client``) cork ours the same way. ``kick`` says the session has output.
    """

    __slots__ = ("_loop", "_scheduled", "session")

    def __init__(self, transport: asyncio.BaseTransport, session: hs.H2Session) -> None:
        super().__init__(transport)
        self.session = session
        self._loop = asyncio.get_running_loop()
        self._scheduled = False

    def write(self, data: bytes) -> None:  # pragma: no cover - codecs write through the session
        raise TypeError("write through the H2Session, then kick()")

    def kick(self) -> None:
        if not self._corks and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        data = self.session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)


class _DownStream:
    """One HTTP/2 stream's sink: response events become h2 frames, pauses become withheld acks."""

    __slots__ = (
        "closed",
        "end_pending",
        "out",
        "out_paused",
        "queued",
        "reasons",
        "request_done",
        "response_done",
        "server",
        "sid",
        "stream",
        "trailers_pending",
        "unacked",
        "writer",
    )

    def __init__(self, server: Http2ServerProtocol, sid: int, request_done: bool) -> None:
        self.server = server
        self.sid = sid
        self.writer = server.writer
        self.stream: Stream = None  # type: ignore[assignment]
        self.request_done = request_done
        self.response_done = False
        self.closed = False
        self.reasons = 0  # why the request body is paused (flow.HELD, PEER_FULL): no acks meanwhile
        self.unacked = 0
        self.out: deque[bytes | memoryview] = deque()  # response bytes waiting for send window
        self.queued = 0
        self.out_paused = False
        self.end_pending = False
        self.trailers_pending: HeaderList | None = None

    # ---- DownstreamSink ----
    def send_informational(self, head: ResponseHead) -> None:
        self._headers(head, False)

    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self._headers(head, end_stream)
        if end_stream:
            self._response_end()

    def _headers(self, head: ResponseHead, end: bool) -> None:
        if self.closed:
            return
        status = _STATUS.get(head.status) or str(head.status).encode()
        headers = [(b":status", status), *head.headers]
        with contextlib.suppress(hs.H2ProtocolError):
            self.server.session.send_headers(self.sid, headers, end)
        self.writer.kick()

    def send_response_data(self, chunk: bytes, end_stream: bool) -> None:
        if self.closed:
            return
        session = self.server.session
        if chunk:
            self.queued += hs.send_or_queue(session, self.sid, chunk, self.out)
            if self.queued > OUT_HIGH and not self.out_paused:
                self.out_paused = True
                if self.stream.response_flow is not None:
                    self.stream.response_flow.pause_reading()
        if end_stream:
            if self.out:
                self.end_pending = True
            else:
                with contextlib.suppress(hs.H2ProtocolError):
                    session.end_stream(self.sid)
                self._response_end()
        self.writer.kick()

    def send_response_trailers(self, trailers: HeaderList) -> None:
        if self.closed:
            return
        if self.out:
            self.trailers_pending = trailers
            return
        with contextlib.suppress(hs.H2ProtocolError):
            self.server.session.send_headers(self.sid, trailers, True)
        self.writer.kick()
        self._response_end()

    def reset(self) -> None:
        """The response cannot complete: RST_STREAM. Envoy's HTTP/2 codec resets a local reset with
        NO_ERROR (``source/common/http/http2/codec_impl.cc``, ``reasonToReset``); gRPC clients read a
        reset before trailers as INTERNAL / UNAVAILABLE either way."""
        if self.closed:
            return
        self.server.session.reset(self.sid, w.NO_ERROR)
        self.writer.kick()
        self._close()

    def pause_request_body(self, reason: int) -> None:
        self.reasons |= reason

    def resume_request_body(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and self.unacked:
            n, self.unacked = self.unacked, 0
            self.server.session.consumed(self.sid, n)
            self.writer.kick()

    def flush_later(self, writer: CorkedWriter) -> None:
        self.server.flush_later(writer)

    def start_relay(self, upstream: RelayPeer) -> RelayPeer:
        """Upgrades need extended CONNECT (RFC 8441), which we do not advertise."""
        raise NotImplementedError("protocol upgrades over downstream HTTP/2")

    # ---- send window ----
    def drain(self) -> None:
        """The peer opened its window: send what waited, then the end or trailers that followed."""
        if self.closed:
            return
        session = self.server.session
        self.queued -= hs.send_queued(session, self.sid, self.out)
        if self.out_paused and self.queued < OUT_LOW:
            self.out_paused = False
            if self.stream.response_flow is not None:
                self.stream.response_flow.resume_reading()
        if not self.out and (self.trailers_pending is not None or self.end_pending):
            with contextlib.suppress(hs.H2ProtocolError):
                if self.trailers_pending is not None:
                    session.send_headers(self.sid, self.trailers_pending, True)
                else:
                    session.end_stream(self.sid)
            self.trailers_pending = None
            self.end_pending = False
            self._response_end()
        self.writer.kick()

    # ---- end of life ----
    def _response_end(self) -> None:
        self.response_done = True
        if not self.request_done:
            # RFC 9113 §8.1: a complete response may precede the request's end; tell the client to stop.
            self.server.session.reset(self.sid, w.NO_ERROR)
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.streams.pop(self.sid, None)
        self.stream.complete()


class Http2ServerProtocol(asyncio.Protocol):
    """One downstream HTTP/2 connection (client preface ``PRI * HTTP/2.0`` expected first)."""

    def __init__(
        self,
        chain: FilterChain,
        info: DownstreamInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
        settings: hs.H2Settings | None = None,
    ) -> None:
        self._chain = chain
        self._info = replace(info, http2=True) if info is not None else None
        self._clock = clock
        self._settings = settings
        self.streams: dict[int, _DownStream] = {}
        self.session: hs.H2Session = None  # type: ignore[assignment]
        self.writer: SessionWriter = None  # type: ignore[assignment]
        self.transport: asyncio.Transport | None = None
        self._in_read = False
        self._peers: list[CorkedWriter] = []

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session = hs.H2Session(client_side=False, settings=self._settings)
        self.writer = SessionWriter(transport, self.session)
        self.writer.flush()  # our SETTINGS first, as a server must (RFC 9113 §3.4)
        if self._info is None:
            peer = transport.get_extra_info("peername")
            address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            self._info = DownstreamInfo(peer_address=address, http2=True)

    def data_received(self, data: bytes) -> None:
        writer = self.writer
        writer.cork()
        self._in_read = True
        try:
            for ev in self.session.receive_data(data):
                self._dispatch(ev)
        finally:
            self._in_read = False
            peers, self._peers = self._peers, []
            for w in peers:
                w.uncork()
            writer.uncork()
        if self.session.dead and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for ds in streams.values():
            ds.closed = True
            ds.stream.complete()

    def pause_writing(self) -> None:
        for ds in self.streams.values():
            if ds.stream.response_flow is not None:
                ds.stream.response_flow.pause_reading()

    def resume_writing(self) -> None:
        for ds in list(self.streams.values()):
            if ds.stream.response_flow is not None and not ds.out_paused:
                ds.stream.response_flow.resume_reading()

    # ---- events ----
    def _dispatch(self, ev: hs.H2Event) -> None:
        if type(ev) is hs.DataReceived:
            self._on_data(ev.stream_id, ev.data)
        elif type(ev) is hs.HeadersReceived:
            self._on_request(ev.stream_id, ev.headers, ev.end_stream)
        elif type(ev) is hs.StreamEnded:
            ds = self.streams.get(ev.stream_id)
            if ds is not None and not ds.request_done:
                ds.request_done = True
                ds.stream.decode_data(b"", True)
        elif type(ev) is hs.TrailersReceived:
            ds = self.streams.get(ev.stream_id)
            if ds is not None and not ds.request_done:
                ds.request_done = True
                ds.stream.decode_trailers(ev.headers)
        elif type(ev) is hs.WindowOpened:
            if ev.stream_id:
                ds = self.streams.get(ev.stream_id)
                if ds is not None and ds.out:
                    ds.drain()
            else:
                for ds in list(self.streams.values()):
                    if ds.out:
                        ds.drain()
        elif type(ev) is hs.StreamReset:
            ds = self.streams.pop(ev.stream_id, None)
            if ds is not None:
                ds.closed = True
                ds.stream.complete()  # the router abandons the upstream side
        elif type(ev) is hs.ConnectionClosed and self.session.dead:
            self.connection_lost(None)

    def _on_data(self, sid: int, data: memoryview) -> None:
        n = len(data)
        ds = self.streams.get(sid)
        if ds is None or ds.request_done:
            self.session.consumed(sid, n)
            return
        ds.stream.decode_data(bytes(data), False)
        if ds.reasons and not ds.closed:
            ds.unacked += n
        else:
            self.session.consumed(sid, n)

    def _on_request(self, sid: int, raw: hs.RawHeaders, end: bool) -> None:
        head = request_head(raw)
        if head is None:
            self.session.reset(sid, w.PROTOCOL_ERROR)  # malformed: this stream only
            return
        assert self._info is not None
        ds = _DownStream(self, sid, end)
        ctx = RequestContext(self._info, head, self._clock())
        ds.stream = self._chain.new_stream(ctx, ds)
        self.streams[sid] = ds
        ds.stream.decode_headers(head, end)

    def flush_later(self, writer: CorkedWriter) -> None:
        """An upstream writer fed during this read: corked until the read's events are all handled."""
        if self._in_read:
            writer.cork()
            self._peers.append(writer)

    def close(self, code: int = 0) -> None:
        """GOAWAY (graceful with code 0: streams in flight finish)."""
        self.session.close(code)
        self.writer.kick()


def request_head(raw: hs.RawHeaders) -> RequestHead | None:
    """The chain's view of an HTTP/2 request head, or None if malformed (RFC 9113 §8.3.1: exactly
    one each of ``:method``, ``:scheme``, ``:path``; no CONNECT, no pseudo-header after a regular one).
    Connection-specific headers are dropped; ``cookie`` crumbs are joined for HTTP/1.1 (§8.2.3)."""
    method = scheme = path = authority = None
    host = None
    headers: HeaderList = []
    cookies: list[bytes] | None = None
    regular = False
    for name, value in raw:
        if name[:1] == b":":
            if regular:
                return None
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:
                return None  # :protocol (not advertised), duplicates, unknown pseudo-headers
            continue
        regular = True
        if name in HOP_BY_HOP:
            continue
        if name == b"host":
            host = value
        elif name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
        else:
            headers.append((name, value))
    if method is None or scheme is None or not path or method == b"CONNECT":
        return None
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    auth = authority if authority is not None else host
    return RequestHead(
        method.decode("latin-1"),
        path.decode("latin-1"),
        (auth or b"").decode("latin-1"),
        headers,
        scheme.decode("latin-1"),
    )


def server_protocol_factory(
    chain: FilterChain,
    info: DownstreamInfo | None = None,
    clock: Callable[[], float] = time.monotonic,
    settings: hs.H2Settings | None = None,
) -> Callable[[], Http2ServerProtocol]:
    """For ``loop.create_server`` (``info`` None: taken from the socket's peer address)."""
    return lambda: Http2ServerProtocol(chain, info, clock, settings)
