"""HTTP/1.1 toward the client: the downstream codec, an ``asyncio.Protocol`` on any transport.

The transport is a TCP socket in tests and an HBONE tunnel stream in production (``waypoint/hbone``
implements ``asyncio.Transport``). ``httptools.HttpRequestParser`` callbacks turn bytes into stream
events; nothing per request creates a Task. Requests are answered in order: a pipelined request
waits (reading paused) until the one before it is answered, as Envoy's HTTP/1 codec does. Bodies
stream chunk by chunk with backpressure both ways, and after a ``101`` the connection becomes an
opaque relay to the upstream connection. Each request's response is written by its
:class:`~waypoint.l7.h1_response.ResponseWriter`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import httptools

from waypoint.l7.chain import FilterChain
from waypoint.l7.filter import DownstreamInfo, RequestContext
from waypoint.l7.flow import PEER_FULL, PIPELINE, CorkedWriter, ReadPauser, RelayPeer
from waypoint.l7.h1_response import ResponseWriter
from waypoint.l7.message import DATA, HEADERS, HOP_BY_HOP, TRAILERS, HeaderList, RequestHead

# Envoy's answer to a request its HTTP/1 codec cannot parse (response code details http1.codec_error).
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\n\r\nBad Request"
)


# Request methods as ``str`` without a decode per request (others are decoded as they come).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class Http1ServerProtocol(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    def __init__(
        self, chain: FilterChain, info: DownstreamInfo | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._chain = chain
        self._info = info
        self._clock = clock
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[ResponseWriter] = deque()
        self._parsing: ResponseWriter | None = None
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
            flush = self._flush
            if flush:
                for w in flush:
                    w.uncork()
                flush.clear()
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
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode()
        self.http10 = parser.get_http_version() == "1.0"
        if method == "CONNECT" or (not self._authority and not self.http10):
            raise httptools.HttpParserError("CONNECT or missing Host")  # surfaces as 400 below
        upgrade = self._upgrade.decode("latin-1") if self._upgrade and parser.should_upgrade() else None
        head = RequestHead(
            method, self._url.decode("latin-1"), self._authority.decode("latin-1"), self._headers, "http", upgrade
        )
        ex = ResponseWriter(self, parser.should_keep_alive(), method == "HEAD")
        ex.upgrade = upgrade
        ex.end_at_headers = end = not self._body and upgrade is None
        assert self._info is not None
        ctx = RequestContext(self._info, head, self._clock())
        ex.stream = self._chain.new_stream(ctx, ex)
        self._parsing = ex
        queue = self._queue
        queue.append(ex)
        if len(queue) > 1:
            ex.inbox = [(HEADERS, head, end)]
            self.pauser.pause(PIPELINE)
        else:
            ex.stream.decode_headers(head, end)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            ex.deliver(DATA, body, False)

    def on_message_complete(self) -> None:
        ex, self._parsing = self._parsing, None
        if ex is None or ex.upgrade is not None:
            return  # an upgrade request's "body" is the relay that may follow
        if self._trailers:
            ex.deliver(TRAILERS, self._trailers, True)
        elif not ex.end_at_headers:
            ex.deliver(DATA, b"", True)
        ex.request_done = True
        if ex.response_done:
            self.exchange_progress(ex)

    # ---- lifecycle ----
    def exchange_progress(self, ex: ResponseWriter) -> None:
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
        stream, ex.stream = ex.stream, None  # no writer <-> stream cycle left behind
        if stream is not None:
            stream.complete()
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
