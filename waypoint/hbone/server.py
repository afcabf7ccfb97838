"""The HBONE terminating side: TLS listeners, client verification, one Task per tunnel.

As ztunnel's inbound (facts §1.2, §1.4; ``ZT:src/proxy/inbound.rs``): the certificate is chosen
by the *local* address the client dialled (no SNI), any client of our trust domain gets in
(which identity is authorization's business, later), and each CONNECT is answered only once
the handler knows: 200 after its upstream is up, or an error status.

Every refusal (a failed handshake, a rejected peer, a malformed ``:authority``, one the handler
refuses) is logged at INFO with the peer address and a stable reason, counted in
:attr:`HboneServer.refusals` and passed to ``on_refused`` (the metrics hook); nothing else on
the listener or on other connections is disturbed. Reasons: :func:`classify_handshake_error`'s
(``untrusted_ca``, ``expired``, ``no_client_cert``, ``handshake_failed``, ...) plus
``handshake_timeout``; :class:`PeerRejected`'s (``no_alpn_h2``, ``trust_domain_mismatch``, ...);
``malformed_authority``; and whatever a handler passes to :meth:`TunnelRequest.refuse`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from waypoint.hbone.accept import TakeSocket, tls_handshake
from waypoint.hbone.adapter import HboneConnectionProtocol, ProtocolFactory
from waypoint.hbone.connection import HboneConnection, HboneSettings
from waypoint.hbone.headers import Authority, parse_authority
from waypoint.hbone.stream import HboneStream
from waypoint.identity.tls import classify_handshake_error

if TYPE_CHECKING:
    import ssl

    from waypoint.identity.spiffe import Identity

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TunnelRequest:
    """One CONNECT waiting for its answer. A malformed ``authority`` never gets here: the
    server answers it 400 itself (ztunnel's ``build_inbound_request``), so ``parsed`` is set."""

    authority: str
    parsed: Authority | None
    headers: tuple[tuple[str, str], ...]
    peer_identity: Identity | None
    peer_address: tuple[str, int]
    local_address: tuple[str, int]
    _owner: HboneConnectionProtocol = field(repr=False)
    _stream: HboneStream = field(repr=False)
    answered: int | None = None
    _report: Callable[[str, str, tuple[str, int]], None] | None = field(default=None, repr=False)

    def accept(self, protocol_factory: ProtocolFactory, headers: tuple[tuple[str, str], ...] = ()) -> tuple[
        HboneStream, asyncio.BaseProtocol
    ]:
        """Answer 200 (call this once the upstream is up) and attach the tunnel's protocol."""
        if self.answered is not None:
            raise RuntimeError(f"tunnel already answered {self.answered}")
        self.answered = 200
        protocol = self._owner.accept(self._stream, protocol_factory, headers)
        return self._stream, protocol

    def reject(self, status: int) -> None:
        """Answer ``status`` with END_STREAM (400 malformed, 401 denied, 503 no upstream)."""
        if self.answered is not None:
            return
        self.answered = status
        self._owner.reject(self._stream, status)

    def refuse(self, status: int, reason: str, detail: str = "") -> None:
        """:meth:`reject`, reported as a refusal: logged with the peer and ``reason``, counted,
        passed to ``on_refused`` (e.g. 400 ``authority_not_local``, ztunnel's ``IPMismatch``)."""
        if self.answered is not None:
            return
        self.reject(status)
        if self._report is not None:
            self._report(reason, detail or f"CONNECT {self.authority} answered {status}", self.peer_address)


class HboneServer:
    """Serves HBONE on any number of listeners (one per local pod address).

    The TLS handshake is ours (:mod:`waypoint.hbone.accept`), so its failures are refusals like
    any other. Keepalive as ztunnel's server (facts §1.3): a PING every ``keepalive_s``, the
    connection dropped when no PONG comes within ``ping_timeout_s``.
    """

    def __init__(
        self,
        context_for_local_ip: Callable[[str], ssl.SSLContext],
        verify_client: Callable[[ssl.SSLObject], Identity],
        on_tunnel: Callable[[TunnelRequest], Awaitable[None]],
        on_refused: Callable[[str, str, tuple[str, int]], None] | None = None,
        *,
        settings: HboneSettings | None = None,
        keepalive_s: float = 10.0,
        ping_timeout_s: float = 20.0,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self._context_for = context_for_local_ip
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._verify = verify_client
        self._on_tunnel = on_tunnel
        self._on_refused = on_refused
        self._settings = settings or HboneSettings()
        self._keepalive = (keepalive_s, ping_timeout_s)
        self._handshake_timeout_s = handshake_timeout_s
        self._listeners: list[asyncio.Server] = []
        self.connections: set[HboneConnectionProtocol] = set()
        self.refusals: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        """Accept plain TCP on ``host:port``; the TLS handshake runs per connection, with the
        context for the local address the client dialled (resolved once per address).
        ``reuse_port``: several worker processes share the port (SO_REUSEPORT), as Envoy's workers."""
        if host not in ("", "0.0.0.0", "::"):  # a wildcard: chosen per local address
            self._context(host)  # a bad local address fails here, not on the first client
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TakeSocket(self._accepted), host, port, reuse_port=reuse_port)
        # listeners of pods that left were closed by their owner: forget them (no growth with churn)
        self._listeners = [s for s in self._listeners if s.is_serving()]
        self._listeners.append(server)
        return server

    def _context(self, local_ip: str) -> ssl.SSLContext:
        ctx = self._contexts.get(local_ip)
        if ctx is None:  # contexts are updated in place on rotation, so caching them is safe
            ctx = self._contexts[local_ip] = self._context_for(local_ip)
        return ctx

    # --- accepting ---------------------------------------------------------------------------

    def _accepted(self, sock: socket.socket, peer: tuple[str, int], local: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(sock, peer, local))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: tuple[str, int], local: tuple[str, int]) -> None:
        try:
            ctx = self._context(local[0])
        except Exception as exc:  # e.g. a wildcard listener reached on an address with no workload
            sock.close()
            self._refuse("no_certificate", f"no certificate for local address {local[0]}: {exc!r}", peer)
            return
        proto = self._new_connection()
        try:
            await tls_handshake(sock, ctx, lambda: proto, self._handshake_timeout_s)
        except TimeoutError:
            self.connections.discard(proto)
            self._refuse("handshake_timeout", f"no TLS handshake within {self._handshake_timeout_s}s", peer)
        except asyncio.CancelledError:
            if proto.transport is None:
                self.connections.discard(proto)
            raise
        except Exception as exc:
            self.connections.discard(proto)
            self._refuse(classify_handshake_error(exc), str(exc) or type(exc).__name__, peer)

    def _new_connection(self) -> HboneConnectionProtocol:
        proto = HboneConnectionProtocol(
            HboneConnection(client_side=False, settings=self._settings),
            verify_peer=self._verify,
            on_rejected=self._refused,
            on_tunnel=self._tunnel,
            keepalive_s=self._keepalive[0],
            ping_timeout_s=self._keepalive[1],
        )
        # registered before the handshake ends, so close() reaches a connection whose
        # handshake completed while its task had not resumed yet
        self.connections.add(proto)
        proto.closed.add_done_callback(lambda _f: self.connections.discard(proto))
        return proto

    # --- refusals ----------------------------------------------------------------------------

    def _refused(self, exc: BaseException, peer: Any) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        detail = getattr(exc, "detail", str(exc))
        self._refuse(reason, detail, peer)

    def _refuse(self, reason: str, detail: str, peer: tuple[str, int]) -> None:
        self.refusals[reason] += 1
        log.info("HBONE client %s:%s refused: %s (%s)", peer[0], peer[1], reason, detail)
        if self._on_refused is not None:
            try:
                self._on_refused(reason, detail, peer)
            except Exception:  # a metrics hook must never take the server down
                log.exception("on_refused hook failed")

    # --- tunnels -----------------------------------------------------------------------------

    def _tunnel(self, stream: HboneStream) -> None:
        owner = stream._owner
        authority = stream.get_extra_info("authority")
        peer = owner.get_extra_info("peername")[:2]
        try:
            parsed = parse_authority(authority)
        except ValueError as exc:  # ztunnel answers 400 before anything else (facts §1.4)
            owner.reject(stream, 400)
            self._refuse("malformed_authority", str(exc), peer)
            return
        sockname = owner.get_extra_info("sockname")
        request = TunnelRequest(
            authority, parsed, stream.get_extra_info("headers"), owner.peer_identity,  # type: ignore[arg-type]
            peer, sockname[:2], owner, stream, _report=self._refuse,
        )
        task = asyncio.get_running_loop().create_task(self._handle(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, request: TunnelRequest) -> None:
        try:
            await self._on_tunnel(request)
        except ConnectionResetError:
            pass  # the client went away before we answered
        except Exception:
            log.exception("HBONE tunnel handler failed for %s", request.authority)
            request.reject(503)
            return
        if request.answered is None:  # a handler that answered nothing: no upstream
            request.reject(503)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening, GOAWAY every connection, wait for streams up to ``grace_s``."""
        for server in self._listeners:
            server.close()
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await asyncio.gather(*(c.shutdown(grace_s) for c in list(self.connections)))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._listeners:
            await server.wait_closed()
        self._listeners.clear()
