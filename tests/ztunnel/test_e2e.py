"""client → SOCKS5 → ztunnel A → HBONE → ztunnel B → server, over real sockets and real mTLS."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from typing import Any

import httpx
import pytest

from tests.support.wait import wait_for
from waypoint.errors import TunnelError
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.roles.ztunnel import ZtunnelRole
from waypoint.testing.certs import identity, workload_cert

from .mesh import CLIENT_IP, ECHO_VIP, EMPTY_VIP, OUTSIDE_IP, SERVER_IP, SERVER_PORT, socks5_connect
from .test_telemetry import samples

MiB = 1 << 20


class App:
    """The server pod's app on SERVER_IP:SERVER_PORT: streams ``size`` bytes while hashing what it reads."""

    def __init__(self, size: int, ip: str = SERVER_IP) -> None:
        self.size = size
        self.ip = ip
        self.received: list[tuple[int, bytes]] = []
        self.sent_digest = b""
        self.peers: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])

        async def send() -> None:
            self.sent_digest = await send_random(writer, self.size, seed=2)

        sender = asyncio.get_running_loop().create_task(send())
        try:
            received = await read_to_eof(reader)
            await sender
            self.received.append(received)
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            writer.close()

    async def __aenter__(self) -> App:
        self.server = await asyncio.start_server(self.handle, self.ip, SERVER_PORT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def send_random(writer: asyncio.StreamWriter, size: int, seed: int) -> bytes:
    """Send ``size`` bytes from a seeded generator, then EOF; the SHA-256 of what was sent."""
    digest = hashlib.sha256()
    rng = random.Random(seed)
    left = size
    while left:
        chunk = rng.randbytes(min(MiB, left))
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
        left -= len(chunk)
    writer.write_eof()
    return digest.digest()


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read until EOF: (bytes read, their SHA-256)."""
    digest, n = hashlib.sha256(), 0
    while chunk := await reader.read(MiB):
        digest.update(chunk)
        n += len(chunk)
    return n, digest.digest()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> tuple[bytes, int, bytes]:
    """Send ``size`` random bytes then EOF while reading to EOF; (sent digest, received n, received digest)."""
    sender = asyncio.get_running_loop().create_task(send_random(writer, size, seed=1))
    n, digest = await read_to_eof(reader)
    return await sender, n, digest


async def scrape(role: ZtunnelRole) -> dict[str, list[tuple[dict[str, str], float]]]:
    host, port = role.addresses["metrics"]
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{host}:{port}/metrics")).text
    return samples(text)


def fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
async def test_socks5_hbone_64mib_each_way_with_half_close(make_role: Any) -> None:
    a = await make_role("node-a", "127.0.8.1")
    b = await make_role("node-b", "127.0.9.1")
    size = 64 * MiB
    async with App(size) as app:
        rep, reader, writer = await socks5_connect(a.addresses["socks5"], "echo.default", 80, CLIENT_IP)
        assert rep == 0
        sent_digest, n, got_digest = await asyncio.wait_for(exchange(reader, writer, size), 90)
        writer.close()
        await wait_for(lambda: bool(app.received))
    assert app.received == [(size, sent_digest)]
    assert (n, got_digest) == (size, app.sent_digest)
    assert app.peers == [CLIENT_IP]  # the app sees the client pod's address
    await wait_for(lambda: not a.conns.live and not b.conns.live)

    src = await scrape(a)
    opened = src["istio_tcp_connections_opened_total"]
    assert len(opened) == 1
    labels = opened[0][0]
    assert labels["reporter"] == "source"
    assert labels["source_workload"] == "sleep" and labels["source_workload_namespace"] == "default"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert labels["destination_workload"] == "echo-1"
    assert labels["destination_service"] == "echo.default.svc.cluster.local"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/echo"
    assert labels["connection_security_policy"] == "mutual_tls" and labels["request_protocol"] == "tcp"
    assert src["istio_tcp_received_bytes_total"][0][1] == size
    assert src["istio_tcp_sent_bytes_total"][0][1] == size
    assert src["istio_tcp_connections_closed_total"][0][1] == 1

    dst = await scrape(b)
    labels = dst["istio_tcp_connections_opened_total"][0][0]
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert labels["source_workload"] == "sleep" and labels["destination_workload"] == "echo-1"
    assert labels["destination_service"] == "echo.default.svc.cluster.local"  # from forwarded;host=
    assert dst["istio_tcp_received_bytes_total"][0][1] == size
    assert dst["istio_tcp_sent_bytes_total"][0][1] == size


@pytest.mark.parametrize("host", ["echo.default.svc.cluster.local", "echo", ECHO_VIP])
async def test_socks5_names_and_vip(make_role: Any, host: str) -> None:
    a = await make_role("node-a", "127.0.8.1")
    await make_role("node-b", "127.0.9.1")
    async with App(5) as app:
        rep, reader, writer = await socks5_connect(a.addresses["socks5"], host, 80, CLIENT_IP)
        assert rep == 0
        _, n, _ = await asyncio.wait_for(exchange(reader, writer, 3), 10)
        assert n == 5
        writer.close()
        await wait_for(lambda: bool(app.received))
        assert app.received[0][0] == 3


async def test_plain_client_gets_dev_identity_only_in_dev_mode(make_role: Any) -> None:
    strict = await make_role("node-a", "127.0.8.1")
    dev = await make_role("node-a", "127.0.8.2", dev=True, hbone_port=15009)
    b = await make_role("node-b", "127.0.9.1")
    async with App(2) as app:
        rep, _, writer = await socks5_connect(strict.addresses["socks5"], "echo.default", 80, "127.0.8.99")
        assert rep == 0x02  # connection not allowed by ruleset
        writer.close()
        assert strict.refusals["unknown_source"] == 1
        rep, reader, writer = await socks5_connect(dev.addresses["socks5"], "echo.default", 80, "127.0.8.99")
        assert rep == 0
        await asyncio.wait_for(exchange(reader, writer, 1), 10)
        writer.close()
        await wait_for(lambda: bool(app.received))
    await wait_for(lambda: not b.conns.live)
    labels = (await scrape(b))["istio_tcp_connections_opened_total"][0][0]
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/default"
    assert labels["source_workload"] == "unknown"


async def test_socks5_failure_replies(make_role: Any) -> None:
    a = await make_role("node-a", "127.0.8.1")
    await make_role("node-b", "127.0.9.1")
    # no ready endpoint: host unreachable
    rep, _, w = await socks5_connect(a.addresses["socks5"], EMPTY_VIP, 80, CLIENT_IP)
    assert rep == 0x04
    w.close()
    # the pod exists but its app is not listening: B answers 503 -> connection refused
    rep, _, w = await socks5_connect(a.addresses["socks5"], "echo.default", 80, CLIENT_IP)
    assert rep == 0x05
    w.close()
    # an unresolvable name outside the mesh
    rep, _, w = await socks5_connect(a.addresses["socks5"], "nope.invalid", 80, CLIENT_IP)
    assert rep == 0x04
    w.close()


async def test_authority_not_local_pod_is_400_logged_and_counted(
    make_role: Any, caplog: pytest.LogCaptureFixture
) -> None:
    b = await make_role("node-b", "127.0.9.1")
    cert = workload_cert("default", "sleep")
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server)
    key = PoolKey(cert.identity, frozenset({identity("default", "echo")}), (SERVER_IP, 15008))
    caplog.set_level(logging.INFO)
    with pytest.raises(TunnelError) as err:
        await pool.open(key, f"127.0.9.11:{SERVER_PORT}", (), asyncio.Protocol)
    assert err.value.status == 400
    with pytest.raises(TunnelError) as err:  # the local pod, but nothing listens there
        await pool.open(key, f"{SERVER_IP}:7999", (), asyncio.Protocol)
    assert err.value.status == 503
    await pool.close()
    assert b.refusals["authority_not_local"] == 1 and b.refusals["dial_failed"] == 1
    assert any("authority_not_local" in r.getMessage() for r in caplog.records)
    got = await scrape(b)
    reasons = {lbl["reason"]: v for lbl, v in got["waypoint_refusals_total"]}
    assert reasons["authority_not_local"] == 1 and reasons["dial_failed"] == 1
    failed = got["istio_tcp_connections_failed_total"]
    assert failed[0][0]["response_flags"] == "CONNECT" and failed[0][1] == 1


async def test_same_node_goes_through_own_hbone_listener(make_role: Any) -> None:
    both = await make_role(None, "127.0.8.1")  # serves the pods of every node
    async with App(4) as app:
        rep, reader, writer = await socks5_connect(both.addresses["socks5"], "echo.default", 80, CLIENT_IP)
        assert rep == 0
        _, n, _ = await asyncio.wait_for(exchange(reader, writer, 4), 10)
        writer.close()
        await wait_for(lambda: bool(app.received) and not both.conns.live)
    assert n == 4 and app.received[0][0] == 4
    opened = (await scrape(both))["istio_tcp_connections_opened_total"]
    assert sorted(lbl["reporter"] for lbl, _ in opened) == ["destination", "source"]


async def test_out_of_mesh_destination_is_plain_tcp(make_role: Any) -> None:
    a = await make_role("node-a", "127.0.8.1")
    async with App(3, OUTSIDE_IP) as app:
        rep, reader, writer = await socks5_connect(a.addresses["socks5"], "legacy.legacy", 80, CLIENT_IP)
        assert rep == 0
        _, n, _ = await asyncio.wait_for(exchange(reader, writer, 2), 10)
        writer.close()
        await wait_for(lambda: bool(app.received) and not a.conns.live)
    assert n == 3
    labels = (await scrape(a))["istio_tcp_connections_opened_total"][0][0]
    assert labels["connection_security_policy"] == "unknown" and labels["destination_workload"] == "legacy-1"


async def test_direct_connections_to_capture_ports_are_refused(make_role: Any) -> None:
    a = await make_role("node-a", "127.0.8.1")
    for name, reason in (("outbound", "no_original_destination"), ("inbound_plaintext", "unknown_local_workload")):
        reader, writer = await asyncio.open_connection(*a.addresses[name])
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert a.refusals[reason] == 1
    await wait_for(lambda: not a.conns.live)
