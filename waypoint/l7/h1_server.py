"""HTTP/1.1 toward the client: the downstream codec, an ``asyncio.Protocol`` on any transport.

The transport is a TCP socket in tests and an HBONE tunnel stream in production (``waypoint/hbone``
implements ``asyncio.Transport``). ``httptools.HttpRequestParser`` callbacks turn bytes into stream
events; nothing per request creates a Task. Requests are answered in order: a pipelined request
waits (reading paused) until the one before it is answered, as Envoy's HTTP/1 codec does. Bodies
stream chunk by chunk with backpressure both ways, and after a ``101`` the connection becomes an
opaque relay to the upstream connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import httptools

from waypoint.l7.chain import FilterChain, Stream
from waypoint.l7.filter import DownstreamInfo, RequestContext
from waypoint.l7.flow import PEER_FULL, PIPELINE, CorkedWriter, ReadPauser, RelayPeer
from waypoint.l7.message import HOP_BY_HOP, HeaderList, RequestHead, ResponseHead, header_lines

_HEADERS, _DATA, _TRAILERS = 0, 1, 2
_STATUS_LINE = {s.value: b"HTTP/1.1 %d %s" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
# Envoy's answer to a request its HTTP/1 codec cannot parse (response code details http1.codec_error).
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\n\r\nBad Request"
)


def _status_line(status: int) -> bytes:
    line = _STATUS_LINE.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown" % status


class _Exchange:
    """One request on the connection: the chain's :class:`DownstreamSink`."""

    __slots__ = (
        "chunked",
        "close",
        "end_at_headers",
        "head_request",
        "inbox",
        "request_done",
        "response_done",
        "server",
        "stream",
        "upgrade",
        "writer",
    )

    def __init__(self, server: Http1ServerProtocol, keep_alive: bool, head_request: bool) -> None:
        self.server = server
        self.writer = server.writer
        self.stream: Stream | None = None
        self.inbox: list[tuple[int, Any, bool]] | None = None  # events of a request still waiting its turn
        self.request_done = False
        self.response_done = False
        self.end_at_headers = False
        self.chunked = False
        self.close = not keep_alive
        self.head_request = head_request
        self.upgrade: str | None = None

    def deliver(self, kind: int, payload: Any, end: bool) -> None:
        if self.inbox is not None:
            self.inbox.append((kind, payload, end))
            return
        stream = self.stream
        assert stream is not None
        if kind == _DATA:
            stream.decode_data(payload, end)
        elif kind == _HEADERS:
            stream.decode_headers(payload, end)
        else:
            stream.decode_trailers(payload)

    # ---- DownstreamSink ----
    def send_informational(self, head: ResponseHead) -> None:
        self.writer.write(_status_line(head.status) + b"\r\n" + header_lines(head.headers) + b"\r\n")

    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        status = head.status
        headers = head.headers
        framing: list[bytes] = []
        if status == 101:
            framing += [b"connection: upgrade", b"upgrade: " + (self.upgrade or "").encode()]
        else:
            has_length = any(n == b"content-length" for n, _ in headers)
            if end_stream:
                if not has_length and status not in _NO_BODY_STATUS and not self.head_request:
                    framing.append(b"content-length: 0")
            elif not has_length:
                if self.server.http10:
                    self.close = True  # HTTP/1.0 client: the body ends when we close
                else:
                    self.chunked = True
                    framing.append(b"transfer-encoding: chunked")
            if self.close:
                framing.append(b"connection: close")
            elif self.server.http10:
                framing.append(b"connection: keep-alive")
        framing.append(b"\r\n")
        self.writer.write(_status_line(status) + b"\r\n" + header_lines(headers) + b"\r\n".join(framing))
        if end_stream:
            self._response_end()

    def send_response_data(self, chunk: bytes, end_stream: bool) -> None:
        if self.chunked:
            if chunk:
                self.writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if end_stream:
                self.writer.write(b"0\r\n\r\n")
        elif chunk:
            self.writer.write(chunk)
        if end_stream:
            self._response_end()

    def send_response_trailers(self, trailers: HeaderList) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n" + header_lines(trailers) + b"\r\n")
        self._response_end()

    def reset(self) -> None:
        self.server.abort()

    def pause_request_body(self, reason: int) -> None:
        self.server.pauser.pause(reason)

    def resume_request_body(self, reason: int) -> None:
        self.server.pauser.resume(reason)

    def flush_later(self, writer: CorkedWriter) -> None:
        self.server.flush_later(writer)

    def start_relay(self, upstream: RelayPeer) -> RelayPeer:
        return self.server.start_relay(upstream)

    def _response_end(self) -> None:
        self.response_done = True
        self.server.exchange_progress(self)


class Http1ServerProtocol(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    def __init__(
        self, chain: FilterChain, info: DownstreamInfo | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._chain = chain
        self._info = info
        self._clock = clock
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Exchange] = deque()
        self._parsing: _Exchange | None = None
        self._flush: list[CorkedWriter] = []
        self._peer_writer: CorkedWriter | None = None
        self._in_read = False
        self._relay: RelayPeer | None = None
        self._upgrading = False
        self._early = b""
        self._closed = False
        self._url = b""
        self._headers: HeaderList = []
        self._trailers: HeaderList | None = None
        self._authority = b""
        self._upgrade: bytes | None = None
        self._body = False
        self._in_headers = True
        self.http10 = False
        self.transport: asyncio.Transport | None = None
        self.writer: CorkedWriter = None  # type: ignore[assignment]
        self.pauser: ReadPauser = None  # type: ignore[assignment]

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writer = CorkedWriter(transport)
        self.pauser = ReadPauser(transport)
        if self._info is None or self._info.peer_address is None:
            peer = transport.get_extra_info("peername")
            address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            self._info = replace(self._info or DownstreamInfo(), peer_address=address)

    def data_received(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.relay_write(data)
            return
        if self._upgrading:
            self._early += data  # bytes after an Upgrade request, before the 101: kept for the relay
            return
        if self._closed:
            return
        writer = self.writer
        writer.cork()
        peer = self._peer_writer
        if peer is not None:
            peer.cork()
            self._flush.append(peer)
        self._in_read = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrading = True
            self._early += data[exc.args[0] :]
        except httptools.HttpParserError:
            self._bad_request()
        finally:
            self._in_read = False
            flush, self._flush = self._flush, []
            for w in flush:
                w.uncork()
            writer.uncork()
        queue = self._queue
        if queue and queue[0].response_done and not queue[0].request_done and not self._upgrading:
            self.abort()  # answered before the request was read: Envoy closes such a connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.relay_close()
        queue, self._queue = self._queue, deque()
        for ex in queue:
            if ex.stream is not None:
                ex.stream.complete()

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.pause_reading()
        elif self._queue and (stream := self._queue[0].stream) is not None and stream.response_flow:
            stream.response_flow.pause_reading()

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.resume_reading()
        elif self._queue and (stream := self._queue[0].stream) is not None and stream.response_flow:
            stream.response_flow.resume_reading()

    # ---- httptools callbacks ----
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._trailers = None
        self._authority = b""
        self._upgrade = None
        self._body = False
        self._in_headers = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if not self._in_headers:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        elif name == b"host":
            self._authority = value
        elif name in HOP_BY_HOP:
            if name == b"transfer-encoding":
                self._body = True
            elif name == b"upgrade":
                self._upgrade = value
        else:
            if name == b"content-length" and value != b"0":
                self._body = True
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        parser = self._parser
        method = parser.get_method().decode()
        self.http10 = parser.get_http_version() == "1.0"
        if method == "CONNECT" or (not self._authority and not self.http10):
            raise httptools.HttpParserError("CONNECT or missing Host")  # surfaces as 400 below
        upgrade = self._upgrade.decode("latin-1") if self._upgrade and parser.should_upgrade() else None
        head = RequestHead(method, self._url.decode("latin-1"), self._authority.decode("latin-1"), self._headers)
        head.upgrade = upgrade
        ex = _Exchange(self, parser.should_keep_alive(), method == "HEAD")
        ex.upgrade = upgrade
        ex.end_at_headers = end = not self._body and upgrade is None
        assert self._info is not None
        ctx = RequestContext(self._info, head, self._clock())
        ex.stream = self._chain.new_stream(ctx, ex)
        self._parsing = ex
        queue = self._queue
        queue.append(ex)
        if len(queue) > 1:
            ex.inbox = [(_HEADERS, head, end)]
            self.pauser.pause(PIPELINE)
        else:
            ex.stream.decode_headers(head, end)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            ex.deliver(_DATA, body, False)

    def on_message_complete(self) -> None:
        ex, self._parsing = self._parsing, None
        if ex is None or ex.upgrade is not None:
            return  # an upgrade request's "body" is the relay that may follow
        if self._trailers:
            ex.deliver(_TRAILERS, self._trailers, True)
        elif not ex.end_at_headers:
            ex.deliver(_DATA, b"", True)
        ex.request_done = True
        if ex.response_done:
            self.exchange_progress(ex)

    # ---- lifecycle ----
    def exchange_progress(self, ex: _Exchange) -> None:
        """Called when a request or its response ends; moves on once both have."""
        if not ex.response_done:
            return
        if not ex.request_done:
            if not self._in_read and ex.upgrade is None:
                self.abort()
            elif ex.upgrade is not None:
                self.close_after_write()
            return
        queue = self._queue
        if not queue or queue[0] is not ex:
            return
        queue.popleft()
        self._peer_writer = None
        if ex.stream is not None:
            ex.stream.complete()
        if ex.close:
            self.close_after_write()
            return
        while queue:
            nxt = queue[0]
            inbox, nxt.inbox = nxt.inbox, None
            for ev in inbox or ():
                nxt.deliver(*ev)
            if queue and queue[0] is nxt:
                break  # still in flight: wait for its response
        if len(queue) <= 1:
            self.pauser.resume(PIPELINE)

    def flush_later(self, writer: CorkedWriter) -> None:
        """The active request's upstream writer: corked for this and later reads, flushed after each."""
        self._peer_writer = writer
        if self._in_read:
            writer.cork()
            self._flush.append(writer)

    def start_relay(self, upstream: RelayPeer) -> RelayPeer:
        self._relay = upstream
        self._upgrading = False
        self.pauser.resume(PEER_FULL)
        early, self._early = self._early, b""
        if early:
            upstream.relay_write(early)
        return self

    def _bad_request(self) -> None:
        self._closed = True
        if not self._queue:
            self.writer.write(BAD_REQUEST)
            self.close_after_write()
        else:
            self.abort()

    def close_after_write(self) -> None:
        self._closed = True
        self.writer.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (a reset stream on HTTP/1.1 can only be a closed connection)."""
        self._closed = True
        if self.transport is not None:
            self.writer.flush()
            self.transport.close()

    # ---- RelayPeer (the downstream end of an upgraded connection) ----
    def relay_write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def relay_close(self) -> None:
        self._relay = None
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        self.pauser.pause(PEER_FULL)

    def resume_reading(self) -> None:
        self.pauser.resume(PEER_FULL)


def server_protocol_factory(
    chain: FilterChain, info: DownstreamInfo | None = None, clock: Callable[[], float] = time.monotonic
) -> Callable[[], Http1ServerProtocol]:
    """For ``loop.create_server`` (``info`` None: taken from the socket's peer address)."""
    return lambda: Http1ServerProtocol(chain, info, clock)
