"""The client pod's side: a socket bound to the source pod's address, SOCKS5 CONNECT to the dev mesh
(RFC 1928), then HTTP/1.1, gRPC (HTTP/2 via the ``h2`` state machine) or raw TCP. A peer with no
identity instead dials b-0's plaintext inbound listener directly, from an address no pod has.

Whatever happens comes back as an :class:`Outcome`, what a user would observe; judging is elsewhere.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events

from . import topology
from .apps import RUN_HEADER
from .cases import Run

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """``kind``: ``refused`` (SOCKS5 reply ``rep`` != 0), ``closed`` (EOF/reset, no bytes), ``http``
    (``status`` and ``body``), ``tcp`` (the bytes echoed), ``grpc`` (``status`` = grpc-status)."""

    kind: str
    status: int = 0
    body: bytes = b""
    rep: int = 0


def _socks5(source_ip: str, dst: tuple[str, int], proxy: tuple[str, int]) -> tuple[int, socket.socket]:
    sock = socket.create_connection(proxy, timeout=TIMEOUT_S, source_address=(source_ip, 0))
    sock.sendall(b"\x05\x01\x00")
    assert _read_exactly(sock, 2) == b"\x05\x00", "SOCKS5 no-auth refused"
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(dst[0]) + struct.pack("!H", dst[1]))
    reply = _read_exactly(sock, 10)
    return reply[1], sock


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_all(sock: socket.socket) -> bytes:
    """Everything until EOF; a reset counts as EOF (a refused connection may be reset, not closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def connect(run: Run, endpoints: topology.Endpoints) -> tuple[int, socket.socket]:
    """(SOCKS5 reply, socket) for the run's transport; plaintext has no SOCKS5 step (reply 0)."""
    port = run.request["port"]
    if run.transport == "plaintext":
        sock = socket.create_connection(endpoints.inbound_plaintext, timeout=TIMEOUT_S,
                                        source_address=(run.source_ip, 0))
        return 0, sock
    dst = (topology.B_IP, port) if run.transport == "pod" else (topology.B_VIP, port)
    return _socks5(run.source_ip, dst, endpoints.socks5)


def send(run: Run, endpoints: topology.Endpoints) -> Outcome:
    rep, sock = connect(run, endpoints)
    with sock:
        if rep != 0:
            return Outcome("refused", rep=rep, body=_read_all(sock))
        protocol = run.request["protocol"]
        if protocol == "tcp":
            return _tcp(sock, run)
        if protocol == "grpc":
            return _grpc(sock, run)
        return _http(sock, run)


def _tcp(sock: socket.socket, run: Run) -> Outcome:
    payload = f"{run.id}\n".encode()
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        return Outcome("closed")
    echoed = _read_all(sock)
    return Outcome("tcp", body=echoed) if echoed else Outcome("closed")


def _http(sock: socket.socket, run: Run) -> Outcome:
    r = run.request
    lines = [f"{r['method']} {r['path']} HTTP/1.1", f"Host: {r['host']}", f"{RUN_HEADER}: {run.id}",
             "Connection: close", *(f"{k}: {v}" for k, v in (r.get("headers") or {}).items())]
    if r["method"] in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    except (BrokenPipeError, ConnectionResetError):
        return Outcome("closed")
    data = _read_all(sock)
    if not data:
        return Outcome("closed")
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return Outcome("http", status=status, body=body)


def _grpc(sock: socket.socket, run: Run) -> Outcome:
    """One unary call; the status is grpc-status from the trailers (or a trailers-only reply)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [
        (":method", "POST"), (":scheme", "http"), (":path", run.request["path"]),
        (":authority", f"{run.request['host']}:{run.request['port']}"), ("content-type", "application/grpc"),
        ("te", "trailers"), (RUN_HEADER, run.id),
    ])
    message = run.id.encode()
    conn.send_data(sid, b"\x00" + struct.pack("!I", len(message)) + message, end_stream=True)
    headers: dict[str, str] = {}
    try:
        sock.sendall(conn.data_to_send())
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return Outcome("closed")
            for ev in conn.receive_data(chunk):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update(dict(ev.headers))  # type: ignore[arg-type]
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    return Outcome("grpc", status=int(headers.get("grpc-status", "-1")),
                                   body=headers.get("grpc-message", "").encode())
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return Outcome("closed")
            sock.sendall(conn.data_to_send())
    except ConnectionResetError:
        return Outcome("closed")

