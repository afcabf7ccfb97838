"""The relay over real loopback sockets: byte-exact both ways, half-close, backpressure, resets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from tests.support.wait import wait_for
from waypoint.l4.relay import Relay

HOST = "127.0.8.1"


class Proxy:
    """A minimal splice proxy: accept, (optionally) wait for a gate, connect upstream, splice."""

    def __init__(
        self, upstream: tuple[str, int], gate: asyncio.Event | None = None, pending_limit: int = 256 * 1024
    ) -> None:
        self.upstream = upstream
        self.gate = gate
        self.pending_limit = pending_limit
        self.relays: list[Relay] = []
        self.done: list[Relay] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def factory(self) -> asyncio.BaseProtocol:
        relay = Relay(self.done.append, pending_limit=self.pending_limit)
        self.relays.append(relay)
        task = asyncio.get_running_loop().create_task(self._connect(relay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return relay.downstream

    async def _connect(self, relay: Relay) -> None:
        if self.gate is not None:
            await self.gate.wait()
        try:
            await asyncio.get_running_loop().create_connection(lambda: relay.upstream, *self.upstream)
        except OSError as exc:
            relay.fail(exc)

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.get_running_loop().create_server(self.factory, HOST, 0)
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, tuple[str, int]]:
    server = await asyncio.start_server(handler, HOST, 0)
    return server, server.sockets[0].getsockname()[:2]


async def test_byte_exact_both_ways_with_half_close() -> None:
    up_data = os.urandom(4 * 1024 * 1024 + 17)
    down_data = os.urandom(3 * 1024 * 1024 + 5)
    server_got: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_got.append(await reader.read())  # until the client's EOF travels through
        writer.write(down_data)  # the other direction still flows after that half-close
        await writer.drain()
        writer.close()

    server, addr = await serve(upstream)
    proxy = Proxy(addr)
    paddr = await proxy.start()
    reader, writer = await asyncio.open_connection(*paddr)
    writer.write(up_data)
    await writer.drain()
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert hashlib.sha256(server_got[0]).digest() == hashlib.sha256(up_data).digest()
    assert hashlib.sha256(got).digest() == hashlib.sha256(down_data).digest()
    await wait_for(lambda: len(proxy.done) == 1)
    relay = proxy.done[0]
    assert (relay.bytes_up, relay.bytes_down) == (len(up_data), len(down_data))
    assert relay.error is None
    await proxy.close()
    server.close()


async def test_data_before_upstream_is_buffered_then_delivered() -> None:
    gate = asyncio.Event()
    received = bytearray()
    eof = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())
        eof.set()
        writer.close()

    server, addr = await serve(upstream)
    proxy = Proxy(addr, gate=gate, pending_limit=64 * 1024)
    paddr = await proxy.start()
    reader, writer = await asyncio.open_connection(*paddr)
    early = os.urandom(1024 * 1024)
    writer.write(early)
    await wait_for(lambda: bool(proxy.relays) and proxy.relays[0].downstream.paused != 0)
    # bounded: reading paused once the limit is held, the rest waits in kernel buffers
    assert proxy.relays[0].downstream.pending_size < 64 * 1024 + 256 * 1024
    writer.write_eof()
    gate.set()
    await asyncio.wait_for(eof.wait(), 10)
    assert bytes(received) == early
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: len(proxy.done) == 1)
    await proxy.close()
    server.close()


async def test_backpressure_bounds_memory() -> None:
    """A slow upstream reader pauses the client side: the proxy holds at most ~the buffer limits."""
    start_reading = asyncio.Event()
    total = 24 * 1024 * 1024
    digest = hashlib.sha256()
    count = [0]
    finished = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            count[0] += len(chunk)
        finished.set()
        writer.close()

    server, addr = await serve(upstream)
    proxy = Proxy(addr)
    paddr = await proxy.start()
    _reader, writer = await asyncio.open_connection(*paddr)
    payload = os.urandom(total)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.get_running_loop().create_task(send())
    await wait_for(lambda: bool(proxy.relays) and proxy.relays[0].downstream.paused != 0)
    relay = proxy.relays[0]
    assert relay.upstream.transport is not None
    high = relay.upstream.transport.get_write_buffer_limits()[1]
    # the proxy stopped reading: its buffer towards upstream is within one read of the high mark
    for _ in range(20):
        assert relay.upstream.transport.get_write_buffer_size() <= high + 256 * 1024
        await asyncio.sleep(0.01)
    assert relay.bytes_up < total  # the client could not push everything into the proxy
    start_reading.set()
    await asyncio.wait_for(finished.wait(), 20)
    await sender
    assert count[0] == total and digest.digest() == hashlib.sha256(payload).digest()
    writer.close()
    await wait_for(lambda: len(proxy.done) == 1)
    await proxy.close()
    server.close()


async def test_upstream_reset_resets_client() -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    server, addr = await serve(upstream)
    proxy = Proxy(addr)
    paddr = await proxy.start()
    reader, writer = await asyncio.open_connection(*paddr)
    writer.write(b"hello")
    try:
        data = await asyncio.wait_for(reader.read(), 5)
        reset = False
    except ConnectionResetError:
        reset = True
        data = b""
    assert reset, f"expected RST, got clean EOF with {data!r}"
    await wait_for(lambda: len(proxy.done) == 1)
    assert isinstance(proxy.done[0].error, ConnectionResetError)
    writer.close()
    await proxy.close()
    server.close()


async def test_upstream_refused_closes_client() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        dead = s.getsockname()[:2]  # bound, never listening: connect is refused
        proxy = Proxy(dead)
        paddr = await proxy.start()
        reader, writer = await asyncio.open_connection(*paddr)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await wait_for(lambda: len(proxy.done) == 1)
        assert proxy.done[0].failed and isinstance(proxy.done[0].error, ConnectionRefusedError)
        writer.close()
        await proxy.close()


async def test_client_closes_before_upstream_connects() -> None:
    gate = asyncio.Event()
    accepted = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        assert await reader.read() == b"bye"
        writer.close()

    server, addr = await serve(upstream)
    proxy = Proxy(addr, gate=gate)
    paddr = await proxy.start()
    _, writer = await asyncio.open_connection(*paddr)
    writer.write(b"bye")
    writer.close()
    await wait_for(lambda: bool(proxy.relays) and proxy.relays[0].downstream.eof_received_)
    gate.set()
    await asyncio.wait_for(accepted.wait(), 5)
    await wait_for(lambda: len(proxy.done) == 1)
    await proxy.close()
    server.close()
