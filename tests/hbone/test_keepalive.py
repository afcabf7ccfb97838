"""Timers, with short values: the server's PING keepalive against a silent client, and the pool
releasing an idle connection. Behaviour as ztunnel (facts §1.3: a PING every 10 s, the
connection dropped without a PONG within 20 s, ``ZT:src/proxy/h2.rs``; unused pooled
connections released after ``POOL_UNUSED_RELEASE_TIMEOUT``, ``ZT:src/proxy/pool.rs``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.hbone.helpers import Echo, Sink, open_sockets, other_tasks, until
from waypoint.hbone.adapter import HboneConnectionProtocol
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.testing.certs import identity, workload_cert

SERVER_IP, CLIENT_IP, SILENT_IP = "127.0.3.110", "127.0.3.111", "127.0.3.112"
SERVER_ID, CLIENT_ID = identity("ns1", "server"), identity("ns2", "client")
SLACK_S = 2.0  # a loaded 2-core machine: timers fire late, never early


async def echo(req: TunnelRequest) -> None:
    req.accept(Echo)


def make_server(keepalive_s: float = 10.0, ping_timeout_s: float = 20.0) -> HboneServer:
    ctx = tls.server_context(workload_cert("ns1", "server"))
    return HboneServer(
        lambda _ip: ctx, lambda s: tls.verify_client(s, "cluster.local"), echo,
        keepalive_s=keepalive_s, ping_timeout_s=ping_timeout_s,
    )


def make_pool(**kw: float) -> HbonePool:
    ctx = tls.client_context(workload_cert("ns2", "client"))
    return HbonePool(lambda _i: ctx, tls.verify_server, bind_source_ip=True, **kw)  # type: ignore[arg-type]


async def test_server_drops_a_silent_client_after_ping_timeout() -> None:
    keepalive, timeout = 0.2, 0.4
    sockets = open_sockets()
    server = make_server(keepalive, timeout)
    port = (await server.listen(SERVER_IP, 0)).sockets[0].getsockname()[1]
    pool = make_pool()  # a live client: its h2 layer answers every PING
    try:
        stream, sink = await pool.open(
            PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, port), CLIENT_IP), f"{SERVER_IP}:1", (), Sink
        )
        # the silent client: a valid mTLS handshake, then not one byte (not even the h2 preface)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(
            SERVER_IP, port, ssl=tls.client_context(workload_cert("ns2", "silent")), server_hostname="",
            local_addr=(SILENT_IP, 0),
        )
        started = loop.time()
        # (its reads only fill a StreamReader: nothing there answers a PING)

        def silent_conn() -> HboneConnectionProtocol | None:
            for conn in server.connections:
                if (conn.get_extra_info("peername") or ("",))[0] == SILENT_IP:
                    return conn
            return None

        await until(silent_conn, what="the silent connection is up")
        silent = silent_conn()
        assert silent is not None
        await asyncio.wait_for(asyncio.shield(silent.closed), keepalive + timeout + SLACK_S)
        elapsed = loop.time() - started
        assert keepalive + timeout - 0.05 <= elapsed <= keepalive + timeout + SLACK_S
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # the client sees its end
            while await asyncio.wait_for(reader.read(65536), 5):
                pass
        writer.close()
        # the live client's connection stays, PINGed and answering, and still carries bytes
        assert len(server.connections) == 1 and pool.live_connections == 1
        live = next(iter(server.connections))
        await until(lambda: live._pings >= 3, what="PINGs answered on the live connection")
        stream.write(b"alive")
        await until(lambda: sink.count == 5)  # type: ignore[attr-defined]
        stream.close()
    finally:
        await pool.close()
        await server.close(grace_s=0.5)
    await until(lambda: open_sockets() <= sockets, what="sockets back to the baseline")
    assert other_tasks() == set()


async def test_pool_releases_an_idle_connection_after_idle_timeout() -> None:
    idle = 0.3
    sockets = open_sockets()
    server = make_server()
    port = (await server.listen(SERVER_IP, 0)).sockets[0].getsockname()[1]
    pool = make_pool(idle_timeout_s=idle)
    key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, port), CLIENT_IP)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):  # reused within the idle window: one connection, its timer reset each time
            stream, sink = await pool.open(key, f"{SERVER_IP}:1", (), Sink)
            stream.write_eof()
            await asyncio.wait_for(sink.lost, 5)  # type: ignore[attr-defined]
        assert pool.connections_opened == 1
        idle_since = loop.time()
        await until(lambda: pool.live_connections == 0, timeout=idle + SLACK_S, what="pool released it")
        assert loop.time() - idle_since >= idle - 0.05
        await until(lambda: not server.connections, what="server saw it close")  # a GOAWAY, then close
        stream, sink = await pool.open(key, f"{SERVER_IP}:1", (), Sink)  # a fresh one afterwards
        assert pool.connections_opened == 2
        stream.close()
    finally:
        await pool.close()
        await server.close(grace_s=0.5)
    await until(lambda: open_sockets() <= sockets, what="sockets back to the baseline")
    assert other_tasks() == set()
