"""HTTP/1.1 toward an endpoint: one persistent connection, one request at a time.

An ``asyncio.Protocol`` with ``httptools.HttpResponseParser`` callbacks (llhttp; 3.7x cheaper than
h11, envoy-peer.md). It is an :class:`~waypoint.l7.upstream.UpstreamConnection`; the exchange that
owns the current request is its :class:`~waypoint.l7.upstream.ResponseHandler`, and between
requests the connection sits idle in the pool. The connection is reusable only if the
request was fully sent, the response fully read, and neither side said ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools

from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.h1_framing import NO_BODY_STATUS, content_length, has_content_length, write_body, write_trailers
from waypoint.l7.message import HOP_BY_HOP, HeaderList, RequestHead, ResponseHead, header_lines
from waypoint.l7.upstream import ResponseHandler as ResponseHandler  # re-exported: h2_client imports it here


def encode_request_head(head: RequestHead, chunked: bool) -> bytes:
    """Request line, ``host``, the filtered headers and our own framing headers, ending the head.

    Latin-1 both ways (the codecs decode the target and authority so): every byte the client sent,
    0x80 and above included, reaches the upstream unchanged."""
    start = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (
        head.method.encode("latin-1"), head.path.encode("latin-1"), head.authority.encode("latin-1")
    )
    if head.upgrade is not None:
        framing = b"connection: upgrade\r\nupgrade: " + head.upgrade.encode("latin-1") + b"\r\n\r\n"
    elif chunked:
        framing = b"transfer-encoding: chunked\r\n\r\n"
    else:
        framing = b"\r\n"
    return start + header_lines(head.headers) + framing


class Http1Connection(asyncio.Protocol):
    """A client connection to one endpoint, owned by the pool between requests."""

    def __init__(self, key: object, on_close: Callable[[Http1Connection], None] | None = None) -> None:
        self.key = key
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.writer: CorkedWriter | None = None
        self.handler: ResponseHandler | None = None
        self.closed = False
        self.requests = 0  # requests sent on this connection (tests count reuse with it)
        self._parser = httptools.HttpResponseParser(self)
        self._chunked = False
        self._request_done = True
        self._response_done = True
        self._head_request = False
        self._keep_alive = True
        self._headers: HeaderList = []
        self._trailers: HeaderList | None = None
        self._in_headers = False
        self._informational = False
        self._until_close = False
        self._started = False
        self._upgrade_head: ResponseHead | None = None
        self._relay: RelayPeer | None = None
        self._reset_parser = False
        self._chunked_response = False
        self._read_paused = False
        self._held: bytes | None = None  # the last body piece parsed, not yet passed on

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writer = CorkedWriter(transport)

    def data_received(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.relay_write(data)
            return
        handler = self.handler
        peer = handler.downstream_writer if handler is not None else None
        if peer is not None:
            peer.cork()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self._fail(f"protocol error: {exc}")
        finally:
            if self._held is not None:
                self._pass_held()  # the body goes on without waiting for more bytes
            if peer is not None:
                peer.uncork()
        if self._reset_parser:
            self._reset_parser = False
            self._parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too: a half-closed HTTP/1.1 upstream is not reusable

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._relay is not None:
            relay, self._relay = self._relay, None
            relay.relay_close()
        handler, self.handler = self.handler, None
        if handler is not None and not self._response_done:
            if self._until_close:
                self._response_done = True
                handler.on_response_data(b"", True)
            else:
                reason = "connection termination" if exc is None else f"connection failure ({exc})"
                handler.on_upstream_reset(not self._started, reason)
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.pause_reading()
        elif self.handler is not None:
            self.handler.on_upstream_writable(False)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.resume_reading()
        elif self.handler is not None:
            self.handler.on_upstream_writable(True)

    # ---- request side ----
    def send_request_head(self, handler: ResponseHandler, head: RequestHead, end_stream: bool) -> None:
        """Start a request; ``handler`` receives its response."""
        self.handler = handler
        self.requests += 1
        self._request_done = end_stream
        self._response_done = False
        self._started = False
        self._head_request = head.method == "HEAD"
        self._chunked = not end_stream and head.upgrade is None and not has_content_length(head.headers)
        assert self.writer is not None
        self.writer.write(encode_request_head(head, self._chunked))

    def send_request_data(self, chunk: bytes, end_stream: bool) -> None:
        assert self.writer is not None
        write_body(self.writer, self._chunked, chunk, end_stream)
        if end_stream:
            self._request_done = True

    def send_request_trailers(self, trailers: HeaderList) -> None:
        assert self.writer is not None
        write_trailers(self.writer, self._chunked, trailers)
        self._request_done = True

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self._keep_alive
            and self._request_done
            and self._response_done
            and self._relay is None
            and self._upgrade_head is None
        )

    def detach(self) -> None:
        """The owning exchange is done with this connection: it must not stay paused in the pool."""
        self.handler = None
        if self._read_paused:
            self.resume_reading()

    def close(self) -> None:
        self.handler = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()

    # ---- relay after 101 ----
    def start_relay(self, peer: RelayPeer) -> None:
        self._relay = peer
        self.handler = None

    def relay_write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def relay_close(self) -> None:
        self._relay = None
        self.close()

    # ---- httptools callbacks ----
    def on_message_begin(self) -> None:
        self._headers = []
        self._trailers = None
        self._in_headers = True
        self._until_close = False
        self._chunked_response = False
        self._keep_alive = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if not self._in_headers:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        elif name in HOP_BY_HOP:
            if name == b"connection" and b"close" in value.lower():
                self._keep_alive = False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked_response = True
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        status = self._parser.get_status_code()
        head = ResponseHead(status, self._headers)
        handler = self.handler
        if status < 200:
            if status == 101:
                self._upgrade_head = head
            else:
                self._informational = True
                if handler is not None:
                    handler.on_informational(head)
            return
        self._started = True
        end = self._head_request or status in NO_BODY_STATUS
        if not end:
            length = content_length(self._headers)
            end = length == 0
            self._until_close = length is None and not self._chunked_response
        if not self._parser.should_keep_alive() and self._parser.get_http_version() == "1.0":
            self._keep_alive = False
        if end:
            self._response_done = True
            if self._head_request:
                self._reset_parser = True  # llhttp cannot be told a HEAD response has no body
        if handler is not None:
            handler.on_response_headers(head, end)

    def on_body(self, body: bytes) -> None:
        """Held until the parser says what follows it in this read: the end of the message (then
        it goes on with ``end_stream``, one event and, to an HTTP/2 client, one DATA frame instead
        of a second, empty one), another piece, or nothing yet."""
        if not self._response_done and self.handler is not None:
            if self._held is not None:
                self._pass_held()
            self._held = body

    def _pass_held(self) -> None:
        held, self._held = self._held, None
        if held is not None and self.handler is not None:
            self.handler.on_response_data(held, False)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._upgrade_head is not None or self._response_done:
            return
        self._response_done = True
        self._until_close = False
        if not self._parser.should_keep_alive():
            self._keep_alive = False
        handler = self.handler
        if handler is not None:
            if self._trailers:
                self._pass_held()
                handler.on_response_trailers(self._trailers)
            else:
                held, self._held = self._held, None
                handler.on_response_data(b"" if held is None else held, True)

    # ---- failures and upgrades ----
    def _upgraded(self, rest: bytes) -> None:
        head, self._upgrade_head = self._upgrade_head, None
        handler = self.handler
        if head is None or handler is None:
            self._fail("unexpected upgrade")
            return
        self._started = True
        self._response_done = True
        self._keep_alive = False
        handler.on_upgraded(head, self, rest)

    def _fail(self, reason: str) -> None:
        self._pass_held()
        handler, self.handler = self.handler, None
        self._keep_alive = False
        if handler is not None and not self._response_done:
            handler.on_upstream_reset(not self._started, reason)
        self.close()

