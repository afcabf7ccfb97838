"""A developer tries a policy on a laptop: a copy of the example, `waypoint dev --config DIR --example-apps`,
then an AuthorizationPolicy written into the folder while the mesh runs (README, "Try a policy")."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from waypoint.devmesh.mesh import EXAMPLE_DIR

WAYPOINT = str(Path(sys.executable).with_name("waypoint"))
HOST = "127.0.16.2"  # this test's admin side (test_dev_cli uses .1)
SLEEP_IP = "127.10.0.3"  # pod "sleep" of the example
NOT_ALLOWED = 0x02  # SOCKS5 REP "connection not allowed by ruleset": the destination ztunnel's 401

DENY_SLEEP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-not-from-sleep
  namespace: default
spec:
  selector:
    matchLabels:
      app: echo
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/default/sa/sleep"]
"""


def get_echo(source: str | None) -> tuple[int, bytes]:
    """SOCKS5 CONNECT to echo.default:8080 from ``source``, then one GET: (SOCKS5 reply code, HTTP status line)."""
    with socket.create_connection((HOST, 15080), timeout=10, source_address=(source, 0) if source else None) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        name = b"echo.default"
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", 8080))
        reply = sock.recv(10)
        if reply[1] != 0:
            return reply[1], b""
        sock.sendall(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return 0, data.split(b"\r\n", 1)[0]


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "waypoint dev exited early"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen in time")


def ready() -> bool:
    with urllib.request.urlopen(f"http://{HOST}:15021/healthz/ready", timeout=1) as r:
        return bool(r.status == 200)


def test_a_policy_added_to_a_copy_of_the_example_denies_sleep_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "mymesh"
    shutil.copytree(EXAMPLE_DIR, folder)
    proc = subprocess.Popen(
        [WAYPOINT, "dev", "--config", str(folder), "--example-apps"] + [f"--listen-{n}={HOST}:{p}" for n, p in (
            ("socks5", 15080), ("outbound", 15001), ("inbound-plaintext", 15006), ("readiness", 15021),
            ("metrics", 15020), ("admin", 15000))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until(ready, "readiness", proc)
        assert get_echo(SLEEP_IP) == (0, b"HTTP/1.1 200 OK")  # the example's echo app answers, as sleep
        (folder / "policy.yaml").write_text(DENY_SLEEP)
        wait_until(lambda: get_echo(SLEEP_IP)[0] == NOT_ALLOWED, "the deny", proc)
        assert get_echo(None) == (0, b"HTTP/1.1 200 OK")  # the dev default identity is not sleep: still allowed
        with urllib.request.urlopen(f"http://{HOST}:15020/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert any('response_flags="DENY"' in line and 'source_principal="spiffe://cluster.local/ns/default/sa/sleep"'
                   in line for line in metrics.splitlines() if line.startswith("istio_tcp_connections_opened_total"))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "authorization_denied" in out and "default/echo-not-from-sleep" in out  # the log names the policy
