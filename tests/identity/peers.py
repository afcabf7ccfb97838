"""Real TLS peers on loopback for the identity tests.

The server side runs blocking :class:`ssl.SSLSocket` handshakes in threads, so a refused
handshake surfaces as the exception OpenSSL raised (an asyncio server would only log it);
clients use asyncio streams on uvloop, so the checks run on :class:`ssl.SSLObject` too.
Each accepted connection reports one outcome and then echoes until EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from waypoint.identity.spiffe import Identity
from waypoint.identity.tls import PeerRejected, classify_handshake_error

HOST = "127.0.1.1"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """What the server made of one connection: ok (with identity), rejected, or handshake error."""

    kind: str
    identity: Identity | None = None
    reason: str = ""
    peer_der: bytes | None = None


class ThreadedTLSServer:
    def __init__(self, ctx: ssl.SSLContext, check: Callable[[ssl.SSLSocket], Identity]) -> None:
        self.ctx = ctx
        self._check = check
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def outcome(self) -> Outcome:
        """The next connection's outcome; fails the test after a deadline instead of hanging."""
        return self._outcomes.get(timeout=TIMEOUT_S)

    async def next_outcome(self) -> Outcome:
        """:meth:`outcome` without blocking the event loop the clients run on."""
        return await asyncio.to_thread(self.outcome)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux at once
        self._thread.join(TIMEOUT_S)
        self._listener.close()

    def __enter__(self) -> ThreadedTLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(TIMEOUT_S)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls_sock = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self._outcomes.put(Outcome("handshake", reason=classify_handshake_error(exc)))
            conn.close()
            return
        with tls_sock:
            try:
                identity = self._check(tls_sock)
            except PeerRejected as exc:
                self._outcomes.put(Outcome("rejected", reason=exc.reason))
                return
            der = tls_sock.getpeercert(binary_form=True)
            self._outcomes.put(Outcome("ok", identity=identity, peer_der=der))
            _echo(tls_sock)


def _echo(tls_sock: ssl.SSLSocket) -> None:
    try:
        while data := tls_sock.recv(65536):
            tls_sock.sendall(data)
    except (ssl.SSLError, OSError):
        return


async def open_client(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ssl.SSLObject]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=""), TIMEOUT_S
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    return reader, writer, ssl_object


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT_S)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ssl.SSLError, OSError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT_S)
