"""Accepting TLS connections with the handshake's outcome in our hands.

Why not ``loop.create_server(ssl=ctx)``: the loop then runs the handshake inside the transport,
and a failure (untrusted CA, expired or missing client certificate, a client that never speaks)
reaches nobody but the loop's debug log. HBONE must log and count every refusal with its reason
(ztunnel logs each failed inbound handshake and drops it: ``ZT:src/hyper_util.rs`` ``tls_server``,
"TLS handshake error").

Why not ``loop.start_tls`` on the accepted plain transport either: on uvloop the transport starts
reading right after ``connection_made`` returns, even when the protocol paused reading there
(``uvloop/handles/basetransport.pyx`` ``_call_connection_made``; envoy-peer.md gotcha 6), so the
ClientHello lands in the plain protocol and would have to be re-injected into the TLS protocol
ahead of any later bytes, by poking at the loop's private SSL protocol.

So the accepted socket is taken away from the plain transport *inside* ``connection_made``, before
either loop (uvloop or asyncio's selector loop) has read a byte from it: ``dup`` the descriptor,
``abort`` the plain transport (closing one of two descriptors of a socket sends nothing), and
hand the duplicate to ``loop.connect_accepted_socket(ssl=...)``, which awaits the handshake and
raises its error. The cost is one ``dup``, one ``close``, one short-lived transport and one Task
per connection, lost in the noise of the handshake itself (a microbenchmark of server CPU per
handshake, uvloop, P-256: about 1.4 ms either way, ``ssl=`` or this path).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

Address = tuple[str, int]
OnSocket = Callable[[socket.socket, Address, Address], None]


class TakeSocket(asyncio.Protocol):
    """``create_server``'s protocol for one accepted TCP connection: takes the socket away
    before anything is read and calls ``on_socket(sock, peer, local)``."""

    __slots__ = ("_on_socket",)

    def __init__(self, on_socket: OnSocket) -> None:
        self._on_socket = on_socket

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's TCPTransport is duck-typed, no subclass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        raw = transport.get_extra_info("socket")
        try:
            fd = os.dup(raw.fileno())
        except OSError as exc:  # out of descriptors: nothing we can serve, drop it
            log.warning("HBONE accept from %s dropped: %s", peer, exc)
            transport.abort()
            return
        transport.abort()  # the duplicate keeps the connection; nothing has been read yet
        self._on_socket(socket.socket(fileno=fd), peer[:2], local[:2])

    def data_received(self, data: bytes) -> None:  # pragma: no cover - aborted before reading
        raise AssertionError("the accepted socket was read before it was taken over")


async def tls_handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    timeout_s: float,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Server-side TLS on an accepted socket; the protocol's ``connection_made`` runs once the
    handshake is done. Raises the handshake's error, or ``TimeoutError`` after ``timeout_s``.

    The socket belongs to the loop from the call on (closed by it on failure too), except when
    this raises before handing it over.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        # the loop's own timer is only a backstop: ours tells a timeout from other failures
        return await loop.connect_accepted_socket(
            protocol_factory, sock, ssl=context, ssl_handshake_timeout=timeout_s + 1.0
        )
