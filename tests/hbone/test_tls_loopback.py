"""HBONE end to end over real mTLS on loopback (127.0.3.x): server + pool + streams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from waypoint.errors import TunnelError
from waypoint.hbone.connection import HboneSettings, MiB
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.identity.spiffe import Identity
from waypoint.testing.certs import dev_ca, identity, workload_cert

SERVER_IP = "127.0.3.1"
SERVER_ID = identity("ns1", "server")
CLIENT_ID = identity("ns2", "client")


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


class Echo(asyncio.Protocol):
    """Echoes bytes, half-closes when the client does; respects backpressure both ways."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.lost: BaseException | bool | None = False

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.transport.write_eof()  # type: ignore[attr-defined]
        return True

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc


class Sink(asyncio.Protocol):
    """Collects what arrives (client side of tests)."""

    def __init__(self, pause_at_start: bool = False) -> None:
        self.received = bytearray()
        self.hash = hashlib.sha256()
        self.count = 0
        self.eof = False
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.paused_writing = 0
        self._pause = pause_at_start
        self.keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._pause:
            transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        if self.keep:
            self.received += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@dataclass
class Mesh:
    server: HboneServer
    pool: HbonePool
    port: int
    accepted: list[asyncio.Protocol]
    refused: list[tuple[str, str]]

    def key(self, src_ip: str = "127.0.3.2") -> PoolKey:
        return PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, self.port), src_ip)

    async def open(self, authority: str = "10.0.0.1:80", proto: Sink | None = None) -> tuple[asyncio.Transport, Sink]:
        sink = proto or Sink()
        stream, p = await self.pool.open(self.key(), authority, (), lambda: sink)
        assert p is sink
        return stream, sink


def make_handler(accepted: list[asyncio.Protocol], factory: Callable[[], asyncio.Protocol] = Echo) -> Callable[
    [TunnelRequest], Awaitable[None]
]:
    async def on_tunnel(req: TunnelRequest) -> None:
        if req.parsed is None:
            req.reject(400)
        elif req.authority == "10.9.9.9:1":
            return  # answers nothing: 503
        elif req.authority == "10.9.9.9:2":
            raise RuntimeError("handler bug")
        elif req.authority == "10.9.9.9:3":
            req.reject(401)
        else:
            assert req.peer_identity == CLIENT_ID
            _stream, proto = req.accept(factory)
            accepted.append(proto)  # type: ignore[arg-type]

    return on_tunnel


async def start_mesh(
    *, server_settings: HboneSettings | None = None, keepalive: tuple[float, float] = (10.0, 20.0),
    factory: Callable[[], asyncio.Protocol] = Echo,
) -> Mesh:
    accepted: list[asyncio.Protocol] = []
    refused: list[tuple[str, str]] = []
    server = HboneServer(
        lambda ip: tls.server_context(workload_cert("ns1", "server")),
        lambda ssl_object: tls.verify_client(ssl_object, "cluster.local"),
        make_handler(accepted, factory),
        lambda reason, detail, peer: refused.append((reason, detail)),
        settings=server_settings,
    )
    listener = await server.listen(SERVER_IP, 0)
    port = listener.sockets[0].getsockname()[1]
    pool = HbonePool(
        lambda ident: tls.client_context(workload_cert(ident.namespace, ident.service_account)),
        tls.verify_server,
        bind_source_ip=True,
        keepalive_s=keepalive[0],
        ping_timeout_s=keepalive[1],
    )
    return Mesh(server, pool, port, accepted, refused)


def open_sockets() -> int:
    """Sockets this process holds (other fds, e.g. OpenSSL's lazily opened /dev files, are not ours)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count




async def test_echo_through_server_and_pool(mesh: Mesh) -> None:
    stream, sink = await mesh.open()
    stream.write(b"hello through HBONE")
    await until(lambda: bytes(sink.received) == b"hello through HBONE")
    assert stream.get_extra_info("peer_identity") == SERVER_ID
    assert stream.get_extra_info("peername")[0] == SERVER_IP
    assert stream.get_extra_info("sockname")[0] == "127.0.3.2"
    stream.write_eof()
    await until(lambda: sink.eof)
    assert await asyncio.wait_for(sink.lost, 5) is None
    assert mesh.pool.connections_opened == 1


async def test_16_mib_each_way_byte_exact_with_half_close(mesh: Mesh) -> None:
    blob = os.urandom(16 * MiB)
    stream, sink = await mesh.open()
    sink.keep = False
    for i in range(0, len(blob), 256 * 1024):
        stream.write(blob[i : i + 256 * 1024])
    stream.write_eof()  # our direction ends; the echo keeps flowing back
    await until(lambda: sink.eof, timeout=60)
    assert sink.count == len(blob)
    assert sink.hash.hexdigest() == hashlib.sha256(blob).hexdigest()
    assert await asyncio.wait_for(sink.lost, 5) is None


async def test_paused_reader_bounds_the_writer() -> None:
    paused: list[Sink] = []

    def factory() -> asyncio.Protocol:
        paused.append(Sink(pause_at_start=True))
        return paused[-1]

    m = await start_mesh(factory=factory)
    try:
        stream, sink = await m.open()
        for _ in range(40):
            stream.write(b"b" * MiB)  # 40 MiB offered
        server_stream = paused[0].transport
        await until(lambda: stream.get_extra_info("stream_id") and sink.paused_writing > 0)
        # the peer holds at most one stream window; the rest waits in the writer's buffer
        await asyncio.sleep(0.2)
        held = 40 * MiB - stream.get_write_buffer_size()
        assert held <= 4 * MiB
        assert paused[0].count == 0
        server_stream.resume_reading()  # type: ignore[attr-defined]
        await until(lambda: paused[0].count == 40 * MiB, timeout=60)
        assert stream.get_write_buffer_size() == 0
        stream.close()
    finally:
        await m.pool.close()
        await m.server.close(grace_s=1.0)


@pytest.mark.parametrize(("server_max", "expected"), [(100, 2), (30, math.ceil(200 / 30))])
async def test_200_tunnels_share_connections(server_max: int, expected: int) -> None:
    m = await start_mesh(server_settings=HboneSettings(max_concurrent_streams=server_max))
    try:
        opened = await asyncio.gather(*(m.open(f"10.0.0.1:{1000 + i}") for i in range(200)))
        assert m.pool.connections_opened == expected
        assert m.pool.live_connections == expected
        assert len(m.server.connections) == expected
        for i, (stream, _sink) in enumerate(opened):
            stream.write(f"n{i}".encode())
        await until(lambda: all(bytes(s.received) == f"n{i}".encode() for i, (_t, s) in enumerate(opened)))
        for stream, _sink in opened:
            stream.close()
    finally:
        await m.pool.close()
        await m.server.close(grace_s=1.0)


async def test_answers_other_than_200_become_tunnel_errors(mesh: Mesh) -> None:
    for authority, status in [("not an authority", 400), ("10.9.9.9:1", 503), ("10.9.9.9:2", 503),
                              ("10.9.9.9:3", 401)]:
        with pytest.raises(TunnelError) as err:
            await mesh.open(authority)
        assert err.value.status == status
    stream, sink = await mesh.open()  # the connection is still fine
    stream.write(b"ok")
    await until(lambda: bytes(sink.received) == b"ok")
    stream.close()
    assert mesh.pool.connections_opened == 1


async def test_reset_of_one_stream_leaves_the_other_flowing(mesh: Mesh) -> None:
    a, _sink_a = await mesh.open()
    b, sink_b = await mesh.open()
    a.abort()
    await until(lambda: mesh.accepted[0].lost is not False)  # type: ignore[attr-defined]
    assert isinstance(mesh.accepted[0].lost, ConnectionResetError)  # type: ignore[attr-defined]
    b.write(b"still flowing")
    await until(lambda: bytes(sink_b.received) == b"still flowing")
    assert mesh.pool.connections_opened == 1
    b.close()


async def test_goaway_drain_lets_open_tunnel_finish() -> None:
    m = await start_mesh()
    stream, sink = await m.open()
    closing = asyncio.ensure_future(m.server.close(grace_s=10.0))
    proto = stream._owner  # type: ignore[attr-defined]
    await until(lambda: proto.conn.goaway_received)
    stream.write(b"after goaway")
    await until(lambda: bytes(sink.received) == b"after goaway")
    stream.write_eof()
    await asyncio.wait_for(closing, 5)  # finished when the stream did, well before the deadline
    assert await asyncio.wait_for(sink.lost, 5) is None
    await m.pool.close()


async def test_ping_timeout_drops_a_dead_connection() -> None:
    m = await start_mesh(keepalive=(0.05, 0.2))
    try:
        stream, sink = await m.open()
        client_conn = stream._owner  # type: ignore[attr-defined]
        await until(lambda: client_conn._pings >= 3)  # PINGs answered: the connection stays
        assert m.pool.live_connections == 1
        for server_conn in m.server.connections:
            server_conn.transport.pause_reading()  # type: ignore[union-attr]  # the peer goes silent
        exc = await asyncio.wait_for(sink.lost, 5)
        assert isinstance(exc, ConnectionResetError)
        assert m.pool.live_connections == 0
    finally:
        await m.pool.close()
        await m.server.close(grace_s=0.1)


async def test_client_outside_trust_domain_is_refused() -> None:
    m = await start_mesh()
    # chains to the mesh root, but its SPIFFE ID is in another trust domain (facts §1.2)
    foreign = dev_ca().issue(Identity("other.domain", "ns2", "client"))
    other = HbonePool(lambda ident: tls.client_context(foreign), tls.verify_server)
    try:
        with pytest.raises(TunnelError) as err:
            await other.open(m.key(None), "10.0.0.1:80", (), Sink)  # type: ignore[arg-type]
        assert err.value.status == 503
        await until(lambda: bool(m.refused))
        assert m.refused[0][0] == "trust_domain_mismatch"
    finally:
        await other.close()
        await m.pool.close()
        await m.server.close(grace_s=0.1)


async def test_wrong_server_identity_is_a_503(mesh: Mesh) -> None:
    key = PoolKey(CLIENT_ID, frozenset({Identity("cluster.local", "ns1", "someone-else")}), (SERVER_IP, mesh.port))
    with pytest.raises(TunnelError) as err:
        await mesh.pool.open(key, "10.0.0.1:80", (), Sink)
    assert err.value.status == 503
