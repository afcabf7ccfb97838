"""`waypoint waypoint --concurrency N`: N worker processes share the HBONE port, stop together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from waypoint.testing.certs import dev_ca

WAYPOINT = str(Path(sys.executable).with_name("waypoint"))
ADDRESS = "127.0.15.1"

CONFIG = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: ADDRESS}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
""".replace("ADDRESS", ADDRESS)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def listening_inodes(ip: str, port: int) -> set[str]:
    """Inodes of sockets in LISTEN state on ip:port (from /proc/net/tcp)."""
    want = f"{int.from_bytes(socket.inet_aton(ip), 'little'):08X}:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def wait_until(cond: object, timeout: float = 20.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{ADDRESS}:15021/healthz/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_two_workers_share_the_hbone_port_and_stop_together(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mesh.yaml").write_text(CONFIG)
    dev_ca().save(tmp_path / "ca")
    proc = subprocess.Popen([
        WAYPOINT, "waypoint", "--config", str(tmp_path / "config"), "--gateway", "shop/waypoint",
        "--ca-dir", str(tmp_path / "ca"), "--readiness", f"{ADDRESS}:15021", "--admin", f"{ADDRESS}:15000",
        "--metrics", f"{ADDRESS}:15020", "--concurrency", "2",
    ])
    try:
        wait_until(ready)
        workers = children_of(proc.pid)
        assert len(workers) == 2
        # SO_REUSEPORT: two listening sockets on the one port, one held by each worker
        listeners = listening_inodes(ADDRESS, 15008)
        assert len(listeners) == 2
        for worker in workers:
            assert len(socket_inodes(worker) & listeners) == 1
        with socket.create_connection((ADDRESS, 15008), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in workers))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
