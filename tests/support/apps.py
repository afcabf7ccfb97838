"""Pieces shared by the loopback apps the tests put behind a proxy: a TCP echo, the request side of
an HTTP/1.1 app, and a large chunked body written with backpressure."""

from __future__ import annotations

import asyncio
from typing import Any

import httptools


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back every byte; at the client's EOF close (no half-close of our own)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class HttpApp(asyncio.Protocol):
    """The request side of a test's HTTP/1.1 app (httptools): counts the body, keeps the URL and the
    headers (a repeated name: the last value), and closes on bytes it cannot parse. A subclass
    answers in ``on_message_complete`` through ``self.t``."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.t: Any = None  # the transport (uvloop's are not asyncio.Transport subclasses)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.n = 0  # request body bytes so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.t.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.n = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.n += len(body)


async def write_chunked(t: Any, total: int, chunk: bytes) -> None:
    """``total`` bytes of ``chunk`` repeated as a chunked body after a head already written, pausing
    while more than 1 MiB waits in the transport's buffer (polled: a Protocol has no ``drain``)."""
    sent = 0
    while sent < total:
        if t.is_closing():
            return
        n = min(len(chunk), total - sent)
        t.write(b"%x\r\n%b\r\n" % (n, chunk[:n]))
        sent += n
        while t.get_write_buffer_size() > 1 << 20 and not t.is_closing():
            await asyncio.sleep(0.002)
    t.write(b"0\r\n\r\n")
