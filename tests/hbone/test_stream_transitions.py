"""Every late transition of an ``HboneStream`` behaves as an asyncio transport's would: closing a
stream that is already gone is a no-op, a write to a gone stream is dropped (and ``is_closing()``
says so first), nothing escapes into a protocol callback or the loop's exception handler.

The bugs came from the L7 bench (``python -m bench.l7 --only ours``): the peer's END_STREAM and
RST_STREAM arrive in one read, so h2 has closed the stream before our protocol hears END_STREAM
and answers with ``close()`` (``h2.exceptions.StreamClosedError``); or a DATA frame and the
RST_STREAM arrive together and the protocol echoes the data (``ValueError: stream N is not open
for sending``). The peer here is a raw client (our sans-I/O ``HboneConnection`` over a real TLS
socket) so that it can put exactly those frames into one TLS record. Loopback 127.0.3.200-209.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.hbone.helpers import until
from waypoint.hbone.connection import HboneConnection
from waypoint.hbone.events import DataReceived, HboneEvent, StreamEnded, StreamReset, TunnelAnswered
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.hbone.stream import HboneStream
from waypoint.identity import tls
from waypoint.testing.certs import workload_cert

SERVER_IP, CLIENT_IP = "127.0.3.200", "127.0.3.201"


class Recorder(asyncio.Protocol):
    """Our side of the tunnel. Echoes unless told otherwise, recording what ``is_closing()`` said
    just before each echo; ``eof_received`` lets the transport close itself unless told otherwise."""

    def __init__(self, *, echo: bool = True, close_on_eof: bool = True) -> None:
        self.echo, self.close_on_eof = echo, close_on_eof
        self.data = bytearray()
        self.closing_at_write: list[bool] = []
        self.eof = False
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: HboneStream = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.echo:
            self.closing_at_write.append(self.transport.is_closing())
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        return not self.close_on_eof  # False: the transport closes itself (asyncio's contract)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@dataclass
class RawPeer:
    """An HBONE client we drive frame by frame: the sans-I/O connection over a real TLS socket."""

    conn: HboneConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    events: list[HboneEvent] = field(default_factory=list)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)  # one write: one TLS record, one read on the other side
            await self.writer.drain()

    async def wait_for(self, cond: Callable[[HboneEvent], bool], timeout: float = 10.0) -> HboneEvent:
        async with asyncio.timeout(timeout):
            while True:
                for ev in self.events:
                    if cond(ev):
                        return ev
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.events += self.conn.receive_data(data)
                await self.flush()

    async def open(self) -> int:
        sid = self.conn.open_tunnel(f"{SERVER_IP}:80")
        await self.flush()
        answer = await self.wait_for(lambda e: isinstance(e, TunnelAnswered) and e.stream_id == sid)
        assert isinstance(answer, TunnelAnswered) and answer.status == 200
        return sid


@dataclass
class Server:
    """Our HBONE server; each tunnel is accepted with the protocol ``factory`` makes."""

    hbone: HboneServer
    port: int
    errors: list[dict[str, Any]]  # whatever reached the loop's exception handler
    factory: Callable[[], Recorder] = Recorder
    accepted: list[Recorder] = field(default_factory=list)

    async def on_tunnel(self, req: TunnelRequest) -> None:
        _stream, proto = req.accept(self.factory)
        self.accepted.append(proto)  # type: ignore[arg-type]

    async def peer(self) -> RawPeer:
        ctx = tls.client_context(workload_cert("ns2", "client"))
        reader, writer = await asyncio.open_connection(
            SERVER_IP, self.port, ssl=ctx, server_hostname="", local_addr=(CLIENT_IP, 0)
        )
        raw = RawPeer(HboneConnection(client_side=True), reader, writer)
        await raw.flush()
        return raw

    async def open(self, factory: Callable[[], Recorder] = Recorder) -> tuple[RawPeer, int, Recorder]:
        """A new connection with one tunnel; our side's protocol made by ``factory``."""
        self.factory = factory
        peer = await self.peer()
        count = len(self.accepted)
        sid = await peer.open()
        await until(lambda: len(self.accepted) > count, what="tunnel accepted")
        return peer, sid, self.accepted[-1]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    holder: list[Server] = []

    async def on_tunnel(req: TunnelRequest) -> None:
        await holder[0].on_tunnel(req)

    ctx: ssl.SSLContext = tls.server_context(workload_cert("ns1", "server"))
    hbone = HboneServer(lambda _ip: ctx, lambda s: tls.verify_client(s, "cluster.local"), on_tunnel)
    listener = await hbone.listen(SERVER_IP, 0)
    holder.append(Server(hbone, listener.sockets[0].getsockname()[1], errors))
    yield holder[0]
    await hbone.close(grace_s=0.5)
    loop.set_exception_handler(None)


async def test_end_stream_and_reset_in_one_read_close_is_a_no_op(server: Server) -> None:
    peer, sid, ours = await server.open(lambda: Recorder(echo=False, close_on_eof=True))
    peer.conn.end_stream(sid)
    peer.conn.reset(sid)
    await peer.flush()  # END_STREAM and RST_STREAM in one record: h2 closes before we hear EOF
    exc = await asyncio.wait_for(ours.lost, 5)
    assert exc is None or isinstance(exc, ConnectionError)
    assert ours.eof
    assert ours.transport.is_closing()
    ours.transport.close()  # once more, and abort after close: still no-ops
    ours.transport.abort()
    assert server.errors == []
    assert not peer.writer.is_closing()  # the connection survived
    second = await peer.open()
    assert second > sid
    peer.writer.close()


async def test_data_and_reset_in_one_read_the_echo_is_dropped(server: Server) -> None:
    peer, sid, ours = await server.open()
    peer.conn.send(sid, b"ping")
    peer.conn.reset(sid)
    await peer.flush()  # DATA then RST_STREAM in one record: the protocol echoes a gone stream
    await until(lambda: bytes(ours.data) == b"ping", what="data delivered")
    assert ours.closing_at_write == [True]  # is_closing() said so before the write
    assert isinstance(await asyncio.wait_for(ours.lost, 5), ConnectionError)
    assert server.errors == []
    second = await peer.open()
    assert second > sid
    peer.writer.close()


async def test_write_after_close_is_dropped_and_write_after_write_eof_raises(server: Server) -> None:
    peer, sid, ours = await server.open(lambda: Recorder(echo=False))
    stream = ours.transport
    stream.write(b"before")
    stream.close()
    stream.write(b"after close")  # asyncio transports drop it; they do not raise
    stream.close()
    ended = await peer.wait_for(lambda e: isinstance(e, StreamEnded) and e.stream_id == sid)
    assert ended
    got = b"".join(bytes(e.data) for e in peer.events if isinstance(e, DataReceived) and e.stream_id == sid)
    assert got == b"before"
    stream.abort()  # after close, while the peer's direction is still open: RST_STREAM CANCEL
    reset = await peer.wait_for(lambda e: isinstance(e, StreamReset) and e.stream_id == sid)
    assert isinstance(reset, StreamReset) and reset.code == 0x8
    stream.abort()
    sid2 = await peer.open()
    assert server.errors == []
    # write after our own write_eof is the caller's bug, as on asyncio's transports
    _p, _s, other = await server.open(lambda: Recorder(echo=False))
    other.transport.write_eof()
    assert not other.transport.is_closing()  # half-closed: still reading
    with pytest.raises(RuntimeError):
        other.transport.write(b"x")
    assert sid2 > sid
    peer.writer.close()
    _p.writer.close()


async def test_connection_error_then_writes_are_dropped(server: Server) -> None:
    """A framing error fails the connection: every stream is gone for sending at once, before
    connection_lost reaches the streams (the ValueError of the bench logs)."""
    peer, sid, ours = await server.open()
    peer.conn.send(sid, b"x")
    too_long = b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"  # a frame header over 1 MiB: FRAME_SIZE_ERROR
    peer.writer.write(peer.conn.data_to_send() + too_long)  # one record: DATA, then the error
    await peer.writer.drain()
    exc = await asyncio.wait_for(ours.lost, 10)
    assert isinstance(exc, ConnectionError)
    assert ours.closing_at_write == [True]  # the echo of "x" came after the error was read
    ours.transport.write(b"after")
    ours.transport.write_eof()
    ours.transport.close()
    ours.transport.abort()
    assert server.errors == []
    peer.writer.close()


async def test_connection_lost_mid_write(server: Server) -> None:
    peer, _sid, ours = await server.open(lambda: Recorder(echo=False))
    for _ in range(128):
        ours.transport.write(b"w" * 65536)  # more than the window: some is buffered
    assert ours.transport.get_write_buffer_size() > 0
    peer.writer.transport.abort()
    exc = await asyncio.wait_for(ours.lost, 10)
    assert isinstance(exc, ConnectionError)
    assert ours.transport.is_closing()
    assert ours.transport.get_write_buffer_size() == 0
    ours.transport.write(b"after")
    ours.transport.write_eof()
    ours.transport.close()
    ours.transport.abort()
    assert server.errors == []
