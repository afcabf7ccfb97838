"""The server's own accept path (``waypoint/hbone/accept.py``): the certificate follows the local
address the client dialled (facts §1.2, ztunnel's ``InboundCertProvider``), and closing the server
in the middle of handshakes leaves no socket or task behind."""

from __future__ import annotations

import asyncio
import ssl

from tests.hbone.helpers import Sink, open_sockets, other_tasks, until
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.testing.certs import identity, workload_cert

POD_A, POD_B, CLIENT_IP = "127.0.3.140", "127.0.3.141", "127.0.3.142"
CLIENT_ID = identity("ns2", "client")


async def accept_sink(req: TunnelRequest) -> None:
    req.accept(Sink)


async def test_wildcard_listener_presents_the_dialled_pods_certificate() -> None:
    sockets = open_sockets()
    asked: list[str] = []
    pods = {POD_A: ("ns1", "pod-a"), POD_B: ("ns1", "pod-b")}

    def context_for(ip: str) -> ssl.SSLContext:
        asked.append(ip)
        return tls.server_context(workload_cert(*pods[ip]))

    server = HboneServer(context_for, lambda s: tls.verify_client(s, "cluster.local"), accept_sink)
    port = (await server.listen("0.0.0.0", 0)).sockets[0].getsockname()[1]
    pool = HbonePool(lambda _i: tls.client_context(workload_cert("ns2", "client")), tls.verify_server,
                     bind_source_ip=True)
    try:
        for _round in range(2):
            for ip, (ns, sa) in pods.items():
                # the pool verifies the server's SPIFFE ID exactly: each pod address, its own identity
                key = PoolKey(CLIENT_ID, frozenset({identity(ns, sa)}), (ip, port), CLIENT_IP)
                stream, _sink = await pool.open(key, f"{ip}:80", (), Sink)
                stream.abort()
        assert sorted(asked) == [POD_A, POD_B]  # one context per local address, then cached
        assert pool.connections_opened == 2
    finally:
        await pool.close()
        await server.close(grace_s=0.5)
    await until(lambda: open_sockets() <= sockets, what="sockets back to the baseline")


async def test_close_during_handshakes_leaves_nothing_behind() -> None:
    sockets = open_sockets()
    server = HboneServer(
        lambda _ip: tls.server_context(workload_cert("ns1", "pod-a")),
        lambda s: tls.verify_client(s, "cluster.local"), accept_sink, handshake_timeout_s=30.0,
    )
    port = (await server.listen(POD_A, 0)).sockets[0].getsockname()[1]
    silent = [await asyncio.open_connection(POD_A, port, local_addr=(CLIENT_IP, 0)) for _ in range(5)]
    await until(lambda: len(server._handshakes) == 5, what="five handshakes waiting")
    await asyncio.wait_for(server.close(grace_s=0.5), 5)
    for reader, writer in silent:  # each client sees its connection end
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert not server.connections and not server.refusals  # our own shutdown refuses nobody
    await until(lambda: open_sockets() <= sockets, what="sockets back to the baseline")
    assert other_tasks() == set()
