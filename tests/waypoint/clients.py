"""Clients that enter the mesh as a pod: SOCKS5 from a socket bound to the pod's address.

httpx has no SOCKS5 without the ``socksio`` extra (not installed), so its transport gets a
network backend whose ``connect_tcp`` opens the SOCKS5 tunnel and hands httpcore the stream:
HTTP/1.1 and HTTP/2 with prior knowledge then ride it unchanged. grpcio dials a local forwarder
that SOCKS5-connects each accepted connection from the client pod's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

Address = tuple[str, int]


def _socks_request(host: str, port: int) -> bytes:
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes((len(host),)) + host.encode()
    return b"\x05\x01\x00" + addr + struct.pack("!H", port)


async def socks5_open(proxy: Address, host: str, port: int, source_ip: str) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:
    """A connected stream to ``host:port`` through the ztunnel's SOCKS5, as pod ``source_ip``."""
    reader, writer = await asyncio.open_connection(*proxy, local_addr=(source_ip, 0))
    writer.write(b"\x05\x01\x00" + _socks_request(host, port))
    assert await reader.readexactly(2) == b"\x05\x00"
    reply = await reader.readexactly(10)
    if reply[1] != 0:
        writer.close()
        raise ConnectionRefusedError(f"SOCKS5 reply {reply[1]} for {host}:{port}")
    return reader, writer


async def socks5_socket(proxy: Address, host: str, port: int, source_ip: str) -> socket.socket:
    """A non-blocking socket already tunnelled to ``host:port`` (for libraries that take ``sock=``)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source_ip, 0))
    await loop.sock_connect(sock, proxy)
    await loop.sock_sendall(sock, b"\x05\x01\x00" + _socks_request(host, port))
    got = b""
    while len(got) < 12:
        chunk = await loop.sock_recv(sock, 12 - len(got))
        if not chunk:
            raise ConnectionResetError("SOCKS5 proxy closed")
        got += chunk
    if got[3] != 0:
        sock.close()
        raise ConnectionRefusedError(f"SOCKS5 reply {got[3]}")
    return sock


class _Socks5Backend(httpcore.AnyIOBackend):
    def __init__(self, proxy: Address, source_ip: str) -> None:
        self._proxy = proxy
        self._source_ip = source_ip

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(*self._proxy, timeout=timeout, local_address=self._source_ip)
        await stream.write(b"\x05\x01\x00" + _socks_request(host, port), timeout=timeout)
        got = b""
        while len(got) < 12:
            chunk = await stream.read(12 - len(got), timeout=timeout)
            if not chunk:
                raise httpcore.ConnectError("SOCKS5 proxy closed")
            got += chunk
        if got[3] != 0:
            await stream.aclose()
            raise httpcore.ConnectError(f"SOCKS5 reply {got[3]} for {host}:{port}")
        return stream


def http_client(proxy: Address, source_ip: str, *, http2: bool = False, timeout: float = 10.0,
                **kw: Any) -> httpx.AsyncClient:
    """An httpx client that speaks as pod ``source_ip``; ``http2``: prior knowledge only."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(
        network_backend=_Socks5Backend(proxy, source_ip), http1=not http2, http2=http2,
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, **kw)


@contextlib.asynccontextmanager
async def socks_forwarder(proxy: Address, target: Address, source_ip: str) -> AsyncIterator[Address]:
    """A local TCP port (on ``source_ip``) that SOCKS5-connects to ``target`` per accepted connection."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await socks5_open(proxy, target[0], target[1], source_ip)
        except (ConnectionError, OSError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        writer.close()
        up_w.close()

    server = await asyncio.start_server(handle, source_ip, 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
