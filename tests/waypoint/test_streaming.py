"""256 MiB up and down through a waypoint running as its own process, its peak RSS bounded.

Composition: ``waypoint ztunnel`` (every pod) and ``waypoint waypoint --gateway app/waypoint``
as two processes sharing one dev CA folder; the client and the app run in the test. VmHWM
(/proc/<pid>/status) is the waypoint's peak resident set: a bound well under the bytes moved
shows bodies stream through (bounded buffers, backpressure) instead of being held whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from waypoint.identity.ca import DevCA

from . import manifests as m
from .apps import EchoApp
from .clients import http_client

pytestmark = pytest.mark.timeout(240)
SIZE = 256 << 20
RSS_BOUND_KB = 150 * 1024
ZT_SOCKS = (m.ip("11.2"), 15080)
WAYPOINT_BIN = str(Path(sys.executable).with_name("waypoint"))


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _wait_listening(addr: tuple[str, int], proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            _, writer = await asyncio.open_connection(*addr)
            writer.close()
            return
        except OSError:
            assert loop.time() < deadline, f"{addr} not listening after {timeout}s"
            await asyncio.sleep(0.05)


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([WAYPOINT_BIN, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[dict[str, subprocess.Popen[bytes]]]:
    config = m.write(tmp_path / "config", m.standard())
    ca_dir = tmp_path / "ca"
    DevCA.create(m.TD).save(ca_dir)
    off = "off"
    procs = {
        "ztunnel": _start(["ztunnel", "--config", str(config), "--ca-dir", str(ca_dir),
                           "--listen-socks5", f"{ZT_SOCKS[0]}:{ZT_SOCKS[1]}", "--listen-outbound", off,
                           "--listen-inbound-plaintext", off, "--listen-readiness", f"{m.ip('11.2')}:0",
                           "--listen-metrics", off, "--listen-admin", off, "--drain-s", "0.5"],
                          tmp_path / "ztunnel.log"),
        "waypoint": _start(["waypoint", "--config", str(config), "--gateway", "app/waypoint", "--ca-dir",
                            str(ca_dir), "--readiness", f"{m.ip('11.3')}:0", "--admin", f"{m.ip('11.3')}:0",
                            "--metrics", "off",
                            "--concurrency", "1"],  # one process: its pid is the one carrying traffic
                           tmp_path / "waypoint.log"),
    }
    try:
        await _wait_listening(ZT_SOCKS, procs["ztunnel"])
        await _wait_listening((m.WP_IP, 15008), procs["waypoint"])
        yield procs
    finally:
        for proc in procs.values():  # both at once: each drains its live connections
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in procs:
            print(f"--- {name} log tail ---\n" + (tmp_path / f"{name}.log").read_text()[-1500:])


def _chunks(total: int) -> Iterator[bytes]:
    block = bytes(range(256)) * 1024  # 256 KiB
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        yield block[:n]
        sent += n


async def test_256mib_up_and_down_with_bounded_waypoint_rss(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    app = await EchoApp("echo-v1", m.V1_IP, m.APP_PORT).start()
    app2 = await EchoApp("echo-v2", m.V2_IP, m.APP_PORT).start()
    pid = processes["waypoint"].pid
    baseline = _vm_hwm_kb(pid)
    want = hashlib.sha256()
    for chunk in _chunks(SIZE):
        want.update(chunk)

    async def body() -> AsyncIterator[bytes]:
        for chunk in _chunks(SIZE):
            yield chunk

    try:
        async with http_client(ZT_SOCKS, m.CLIENT_IP, timeout=120.0) as client:
            r = await client.post(f"http://{m.ECHO_VIP}/upload", content=body())
            assert r.status_code == 200, r.text
            assert (r.json()["body_bytes"], r.json()["sha256"]) == (SIZE, want.hexdigest())
            got = 0
            async with client.stream("GET", f"http://{m.ECHO_VIP}/download/{SIZE}") as resp:
                assert resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    got += len(chunk)
            assert got == SIZE
    finally:
        await app.stop()
        await app2.stop()
    peak = _vm_hwm_kb(pid)
    print(f"waypoint VmHWM: {baseline / 1024:.1f} MiB at start, {peak / 1024:.1f} MiB after 2 x 256 MiB")
    assert peak < RSS_BOUND_KB, f"waypoint peak RSS {peak} kB: bodies were held in memory"
