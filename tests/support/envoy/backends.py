"""Small loopback backends for the far end of a tunnel: a TCP echo and an HTTP/1.1 header echo.

The HTTP backend answers every request with 200 and a JSON body describing what arrived (method,
path, headers, body length), so a test can see what a proxy in the middle added or routed.
Keep-alive, httptools (llhttp) for parsing; not meant for benchmarks.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import httptools


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def start_tcp_echo(host: str, port: int = 0) -> asyncio.Server:
    """A TCP server that sends back every byte it gets; the port is ``server.sockets[0]``."""
    return await asyncio.start_server(_echo, host, port)


class _HeaderEcho(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list[tuple[str, str]] = []
        self._url = b""
        self._body_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers, self._url, self._body_len = [], b"", 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        seen: dict[str, Any] = {
            "method": self._parser.get_method().decode(),
            "path": self._url.decode("latin-1"),
            "headers": dict(self._headers),
            "body_length": self._body_len,
            "peer": self._transport.get_extra_info("peername")[0],
        }
        body = json.dumps(seen).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        self._transport.write(head.encode() + body)
        if not self._parser.should_keep_alive():
            self._transport.close()


async def start_http_echo(host: str, port: int = 0) -> asyncio.Server:
    """An HTTP/1.1 server answering every request with the JSON description of that request."""
    return await asyncio.get_running_loop().create_server(_HeaderEcho, host, port)
