"""`waypoint dev` with no folder: the shipped example, as a new user runs it (README's first command)."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

WAYPOINT = str(Path(sys.executable).with_name("waypoint"))
HOST = "127.0.16.1"  # the admin side of this test's dev mesh (not the default 127.0.0.1, so runs never collide)


def socks5(host: str, port: int, source: str | None = None) -> socket.socket:
    """A SOCKS5 CONNECT to a domain name through the dev mesh, from ``source`` if given."""
    sock = socket.create_connection((HOST, 15080), timeout=10, source_address=(source, 0) if source else None)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    reply = sock.recv(10)
    assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"
    return sock


def http_get(sock: socket.socket, path: str) -> dict[str, object]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    answer: dict[str, object] = json.loads(body)
    return answer


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "waypoint dev exited early"
        try:
            with urllib.request.urlopen(f"http://{HOST}:15021/healthz/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("waypoint dev not ready in time")


def test_example_mesh_carries_http_and_tcp_over_mtls_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [WAYPOINT, "dev"] + [f"--listen-{n}={HOST}:{p}" for n, p in (
            ("socks5", 15080), ("outbound", 15001), ("inbound-plaintext", 15006), ("readiness", 15021),
            ("metrics", 15020), ("admin", 15000))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(proc)
        answer = http_get(socks5("echo.default.svc.cluster.local", 8080), "/hello")
        assert answer["pod"] == "echo-7d4b9c-x2x9q" and answer["path"] == "/hello"
        as_sleep = http_get(socks5("echo.default", 8080, source="127.10.0.3"), "/as-sleep")
        assert as_sleep["seen_from"].startswith("127.10.0.3:")  # type: ignore[union-attr,attr-defined]
        tcp = socks5("tcp-echo.default", 9000)
        tcp.sendall(b"hello over hbone\n")
        tcp.shutdown(socket.SHUT_WR)
        assert tcp.recv(100) == b"hello over hbone\n"
        tcp.close()
        with urllib.request.urlopen(f"http://{HOST}:15020/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'connection_security_policy="mutual_tls"' in metrics
        assert 'source_principal="spiffe://cluster.local/ns/default/sa/sleep"' in metrics
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "curl --socks5-hostname" in out  # it told the user how to send a request
    assert 'src.identity="spiffe://cluster.local/ns/default/sa/sleep"' in out  # and showed who talked
    assert 'dst.identity="spiffe://cluster.local/ns/default/sa/echo"' in out
    assert "waypoint dev: stopped" in out
    with socket.socket() as probe:  # everything it started is gone: a server could listen there again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do (TIME_WAIT is fine)
        probe.bind((HOST, 15080))
        probe.listen()
