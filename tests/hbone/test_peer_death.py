"""A peer killed mid-transfer (issue 2): both ends closed within the keepalive bounds, no socket,
pipe or task left behind. The peer is a real process running our HBONE package
(``tests/hbone/peer_process.py``). SIGKILL: the kernel closes its sockets (RST, unread data in
them). SIGSTOP: a silent death, the TCP connection stays open and the kernel keeps ACKing, as when a
pod's veth vanishes with no GOAWAY (facts §1.3, ztunnel#1191); only the PING keepalive finds it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hbone.helpers import Echo, MiB, Pump, other_tasks, until
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.testing.certs import dev_ca, identity, workload_cert

OUR_IP, PEER_IP = "127.0.3.120", "127.0.3.121"
OUR_ID, PEER_ID = identity("ns1", "ours"), identity("ns2", "peer")
KEEPALIVE_S, PING_TIMEOUT_S = 0.3, 0.6
SLACK_S = 2.0  # a loaded 2-core machine: timers fire late, never early
REPO = Path(__file__).resolve().parents[2]
SIGNALS = [signal.SIGKILL, signal.SIGSTOP]


def held_fds() -> int:
    """Sockets and pipes this process holds (a subprocess's pipes count too)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(("socket:", "pipe:"))
    return count


class EchoWatch(Echo):
    """Our server's side of the tunnel: echoes, counts, tells when it is gone."""

    instances: list[EchoWatch] = []

    def __init__(self) -> None:
        self.count = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        EchoWatch.instances.append(self)

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


@contextlib.asynccontextmanager
async def peer(tmp_path: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start the peer process with its certificate (from our dev CA); yield it and its first line."""
    cert_dir = tmp_path / "peer"
    dev_ca().issue(PEER_ID).write_istio_layout(cert_dir)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.hbone.peer_process", args[0], str(cert_dir), PEER_IP, *args[1:],
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert line, "the peer process died at start"
        yield proc, line
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL ends a stopped process too
        await proc.wait()


async def _assert_closed_in_bounds(lost: asyncio.Future[BaseException | None], sig: int, peer_pid: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    os.kill(peer_pid, sig)
    await asyncio.wait_for(asyncio.shield(lost), KEEPALIVE_S + PING_TIMEOUT_S + SLACK_S)
    elapsed = loop.time() - started
    if sig == signal.SIGKILL:
        assert elapsed < SLACK_S  # the kernel's RST/FIN: no timer involved
    else:
        assert PING_TIMEOUT_S - 0.05 <= elapsed <= KEEPALIVE_S + PING_TIMEOUT_S + SLACK_S
    assert isinstance(lost.result(), ConnectionError)  # a reset, never a clean end


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_peer_server_dies_mid_transfer(sig: signal.Signals, tmp_path: Path) -> None:
    fds = held_fds()
    pool = HbonePool(
        lambda _i: tls.client_context(workload_cert("ns1", "ours")), tls.verify_server,
        bind_source_ip=True, keepalive_s=KEEPALIVE_S, ping_timeout_s=PING_TIMEOUT_S,
    )
    try:
        async with peer(tmp_path, "server") as (proc, line):
            key = PoolKey(OUR_ID, frozenset({PEER_ID}), (PEER_IP, int(line.split()[1])), OUR_IP)
            _stream, pump = await pool.open(key, f"{PEER_IP}:1", (), Pump)
            assert isinstance(pump, Pump)
            await until(lambda: pump.count > 2 * MiB, what="echo flowing")
            await _assert_closed_in_bounds(pump.lost, sig, proc.pid)
            assert pool.live_connections == 0
    finally:
        await pool.close()
    await until(lambda: held_fds() <= fds, what="sockets and pipes back to the baseline")
    assert other_tasks() == set()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_peer_client_dies_mid_transfer(sig: signal.Signals, tmp_path: Path) -> None:
    fds = held_fds()
    EchoWatch.instances.clear()
    ctx = tls.server_context(workload_cert("ns1", "ours"))

    async def on_tunnel(req: TunnelRequest) -> None:
        req.accept(EchoWatch)

    server = HboneServer(
        lambda _ip: ctx, lambda s: tls.verify_client(s, "cluster.local"), on_tunnel,
        keepalive_s=KEEPALIVE_S, ping_timeout_s=PING_TIMEOUT_S,
    )
    port = (await server.listen(OUR_IP, 0)).sockets[0].getsockname()[1]
    try:
        async with peer(tmp_path, "client", f"{OUR_IP}:{port}", str(OUR_ID)) as (proc, line):
            assert line == "OPEN"
            await until(lambda: EchoWatch.instances and EchoWatch.instances[0].count > 2 * MiB, what="flowing")
            await _assert_closed_in_bounds(EchoWatch.instances[0].lost, sig, proc.pid)
            await until(lambda: not server.connections, what="the server dropped the connection")
            assert sum(server.refusals.values()) == 0  # a death is not a refusal
    finally:
        await server.close(grace_s=0.5)
    await until(lambda: held_fds() <= fds, what="sockets and pipes back to the baseline")
    assert other_tasks() == set()
