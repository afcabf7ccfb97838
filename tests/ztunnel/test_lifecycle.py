"""Role lifecycle: listeners follow the pods, a silent peer is dropped within keepalive bounds
(nothing left behind), and the CLI process shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.wait import wait_for
from waypoint.mesh.folder import FolderSource

from .mesh import CLIENT_IP, SERVER_IP, SERVER_PORT, pod, socks5_connect
from .test_e2e import App

ROOT = Path(__file__).resolve().parents[2]


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def can_connect(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


async def test_listeners_follow_local_pods(make_role: Any, mesh_dir: Path) -> None:
    a = await make_role("node-a", "127.0.8.1")
    assert set(a.hbone_listeners) == {CLIENT_IP}
    extra = mesh_dir / "extra.yaml"
    extra.write_text(pod("sleep-2", "127.0.8.20", "node-a", "sleep", "sleep"))
    await a.apply(FolderSource(mesh_dir).reload())
    assert set(a.hbone_listeners) == {CLIENT_IP, "127.0.8.20"}
    assert can_connect(("127.0.8.20", 15008))
    extra.unlink()
    await a.apply(FolderSource(mesh_dir).reload())
    assert set(a.hbone_listeners) == {CLIENT_IP}
    assert not can_connect(("127.0.8.20", 15008))
    assert a.config_dump()["local_pods"] == {
        CLIENT_IP: {"pod": "default/sleep-6f8d9-abcde", "identity": "spiffe://cluster.local/ns/default/sa/sleep",
                    "hbone": True},
    }


def ztunnel_cmd(mesh_dir: Path, ca_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "waypoint", "ztunnel", "--config", str(mesh_dir), "--node", "node-b",
        "--ca-dir", str(ca_dir), "--listen-outbound", "127.0.9.1:0", "--listen-socks5", "127.0.9.1:0",
        "--listen-inbound-plaintext", "off", "--listen-metrics", "127.0.9.1:0", "--listen-admin", "off",
        "--listen-readiness", "127.0.9.1:0",
        "--keepalive-s", "0.5", "--ping-timeout-s", "1", *extra,
    ]


async def start_process(cmd: list[str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await loop.run_in_executor(None, can_connect, (SERVER_IP, 15008)):
        if proc.returncode is not None:
            assert proc.stderr is not None
            raise AssertionError(f"ztunnel process exited: {(await proc.stderr.read()).decode()}")
        assert loop.time() < deadline, "ztunnel process not listening"
        await asyncio.sleep(0.1)
    return proc


@pytest.mark.timeout(60)
async def test_silent_peer_dropped_within_keepalive_and_nothing_left(
    make_role: Any, mesh_dir: Path, tmp_path: Path
) -> None:
    from waypoint.testing.certs import dev_ca

    ca_dir = tmp_path / "ca"
    dev_ca().save(ca_dir)  # the in-process ztunnel A uses the same CA
    a = await make_role("node-a", "127.0.8.1")
    proc = await start_process(ztunnel_cmd(mesh_dir, ca_dir))
    try:
        async with App(0) as app:
            await asyncio.sleep(0)
            base_fds, base_tasks = fds(), len(asyncio.all_tasks())
            rep, reader, writer = await socks5_connect(a.addresses["socks5"], "echo.default", 80, CLIENT_IP)
            assert rep == 0
            writer.write(b"x" * 65536)
            await writer.drain()
            await wait_for(lambda: bool(app.peers))
            os.kill(proc.pid, signal.SIGSTOP)  # the peer goes silent: no FIN, no RST, no PONG
            stopped = time.monotonic()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                while True:  # keep writing until the tunnel's death reaches the client
                    writer.write(b"y" * 65536)
                    await asyncio.wait_for(writer.drain(), 10)
                    if reader.at_eof():
                        await reader.readexactly(1)
            elapsed = time.monotonic() - stopped
            assert elapsed < 0.5 + 1.0 + 2.0, f"dead peer detected after {elapsed:.1f}s"
            writer.close()
            await wait_for(lambda: not a.conns.live and a.pool.live_connections == 0)
            # the app's own connection belongs to the frozen peer: it ends when the peer dies
            proc.kill()
            await proc.wait()
            await wait_for(lambda: fds() <= base_fds and len(asyncio.all_tasks()) <= base_tasks)
            assert not a.conns.tasks
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(60)
async def test_cli_serves_metrics_and_stops_on_sigterm(mesh_dir: Path, tmp_path: Path) -> None:
    cmd = ztunnel_cmd(mesh_dir, tmp_path / "ca", "--listen-readiness", "127.0.9.1:15521",
                      "--listen-admin", "127.0.9.1:15500")
    proc = await start_process(cmd)
    try:
        async with httpx.AsyncClient() as client:
            await wait_for(lambda: can_connect(("127.0.9.1", 15521)))
            assert (await client.get("http://127.0.9.1:15521/healthz/ready")).status_code == 200
            dump = (await client.get("http://127.0.9.1:15500/config_dump")).json()
            assert set(dump["local_pods"]) == {SERVER_IP}  # the legacy pod is not enrolled
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert "ztunnel stopped" in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_stop_drains_then_resets_live_connections(make_role: Any) -> None:
    from waypoint.roles.ztunnel import ZtunnelRole

    a: ZtunnelRole = await make_role("node-a", "127.0.8.1")
    b: ZtunnelRole = await make_role("node-b", "127.0.9.1")
    peers: list[str] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername")[0])
        await r.read()  # never answers, never closes first
        w.close()

    app = await asyncio.start_server(silent, SERVER_IP, SERVER_PORT)
    try:
        rep, reader, writer = await socks5_connect(a.addresses["socks5"], "echo.default", 80, CLIENT_IP)
        assert rep == 0
        writer.write(b"hold")
        await wait_for(lambda: bool(peers) and len(a.conns.live) == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await a.stop(grace_s=0.3)  # the client never finishes: reset at the deadline
        assert 0.3 <= loop.time() - started < 3
        assert not a.conns.live and not a.conns.tasks and not a.ready
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()
        await wait_for(lambda: not b.conns.live)
    finally:
        app.close()
