"""One request on a downstream HTTP/1.1 connection, as the filter chain's ``DownstreamSink``.

The chain hands the response to a :class:`ResponseWriter`, which puts it on the wire in HTTP/1.1
framing: a ``content-length`` the filters left, else chunked (or, to an HTTP/1.0 client, a body
that ends when the connection closes), and ``connection: close`` when either side asked for it.
Requests are answered in order, so a pipelined request's events wait in ``inbox`` until the one
before it is answered. The connection itself (parsing, queueing, closing) is ``h1_server``'s.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.h1_framing import NO_BODY_STATUS, has_content_length, write_body, write_trailers
from waypoint.l7.message import DATA, HEADERS, HeaderList, ResponseHead, header_lines

if TYPE_CHECKING:
    from waypoint.l7.chain import Stream
    from waypoint.l7.h1_server import Http1ServerProtocol

_STATUS_LINE = {s.value: b"HTTP/1.1 %d %s" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK``: HTTP/2 and the filters carry no reason phrase, so we supply the standard one."""
    line = _STATUS_LINE.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown" % status


class ResponseWriter:
    """One request/response on the connection: feeds the request to its chain stream, writes the response."""

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
        """A request event: to the chain now, or into ``inbox`` while an earlier request is answered."""
        if self.inbox is not None:
            self.inbox.append((kind, payload, end))
            return
        stream = self.stream
        assert stream is not None
        if kind == DATA:
            stream.decode_data(payload, end)
        elif kind == HEADERS:
            stream.decode_headers(payload, end)
        else:
            stream.decode_trailers(payload)

    # ---- DownstreamSink ----
    def send_informational(self, head: ResponseHead) -> None:
        self.writer.write(status_line(head.status) + b"\r\n" + header_lines(head.headers) + b"\r\n")

    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        status = head.status
        headers = head.headers
        if status != 101 and not self.close and not self.server.http10 and has_content_length(headers):
            # the usual keep-alive response that states its length: no framing header of ours to add
            self.writer.write(status_line(status) + b"\r\n" + header_lines(headers) + b"\r\n")
            if end_stream:
                self._response_end()
            return
        framing: list[bytes] = []
        if status == 101:
            framing += [b"connection: upgrade", b"upgrade: " + (self.upgrade or "").encode()]
        else:
            has_length = has_content_length(headers)
            if end_stream:
                if not has_length and status not in NO_BODY_STATUS and not self.head_request:
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
        self.writer.write(status_line(status) + b"\r\n" + header_lines(headers) + b"\r\n".join(framing))
        if end_stream:
            self._response_end()

    def send_response_data(self, chunk: bytes, end_stream: bool) -> None:
        write_body(self.writer, self.chunked, chunk, end_stream)
        if end_stream:
            self._response_end()

    def send_response_trailers(self, trailers: HeaderList) -> None:
        write_trailers(self.writer, self.chunked, trailers)
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
