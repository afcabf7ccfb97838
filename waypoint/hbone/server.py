"""The HBONE terminating side: TLS listeners, client verification, one Task per tunnel.

As ztunnel's inbound (facts §1.2, §1.4; ``ZT:src/proxy/inbound.rs``): the certificate is chosen
by the *local* address the client dialled (no SNI), any client of our trust domain gets in
(which identity is authorization's business, later), and each CONNECT is answered only once
the handler knows: 200 after its upstream is up, or an error status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from waypoint.hbone.adapter import HboneConnectionProtocol, ProtocolFactory
from waypoint.hbone.connection import HboneConnection, HboneSettings
from waypoint.hbone.headers import Authority, parse_authority
from waypoint.hbone.stream import HboneStream

if TYPE_CHECKING:
    import ssl

    from waypoint.identity.spiffe import Identity

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TunnelRequest:
    """One CONNECT waiting for its answer. ``parsed`` is None when ``authority`` is malformed
    (the handler answers 400, as ztunnel)."""

    authority: str
    parsed: Authority | None
    headers: tuple[tuple[str, str], ...]
    peer_identity: Identity | None
    peer_address: tuple[str, int]
    local_address: tuple[str, int]
    _owner: HboneConnectionProtocol = field(repr=False)
    _stream: HboneStream = field(repr=False)
    answered: int | None = None

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


class HboneServer:
    """Serves HBONE on any number of listeners (one per local pod address)."""

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
    ) -> None:
        self._context_for = context_for_local_ip
        self._verify = verify_client
        self._on_tunnel = on_tunnel
        self._on_refused = on_refused
        self._settings = settings or HboneSettings()
        self._keepalive = (keepalive_s, ping_timeout_s)
        self._listeners: list[asyncio.Server] = []
        self.connections: set[HboneConnectionProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._new_connection, host, port, ssl=self._context_for(host))
        self._listeners.append(server)
        return server

    def _new_connection(self) -> HboneConnectionProtocol:
        proto = HboneConnectionProtocol(
            HboneConnection(client_side=False, settings=self._settings),
            verify_peer=self._verify,
            on_rejected=self._refused,
            on_tunnel=self._tunnel,
            keepalive_s=self._keepalive[0],
            ping_timeout_s=self._keepalive[1],
        )
        self.connections.add(proto)
        proto.closed.add_done_callback(lambda _f: self.connections.discard(proto))
        return proto

    def _refused(self, exc: BaseException, peer: Any) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        detail = getattr(exc, "detail", str(exc))
        log.info("HBONE client %s refused: %s %s", peer, reason, detail)
        if self._on_refused is not None:
            self._on_refused(reason, detail, peer)

    def _tunnel(self, stream: HboneStream) -> None:
        owner = stream._owner
        authority = stream.get_extra_info("authority")
        try:
            parsed: Authority | None = parse_authority(authority)
        except ValueError:
            parsed = None
        sockname = owner.get_extra_info("sockname")
        request = TunnelRequest(
            authority, parsed, stream.get_extra_info("headers"), owner.peer_identity,  # type: ignore[arg-type]
            owner.get_extra_info("peername")[:2], sockname[:2], owner, stream,
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
        await asyncio.gather(*(c.shutdown(grace_s) for c in list(self.connections)))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._listeners:
            await server.wait_closed()
        self._listeners.clear()
