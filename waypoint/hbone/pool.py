"""The HBONE client pool: many tunnels share few mTLS HTTP/2 connections.

Invariants (as ztunnel's ``src/proxy/pool.rs`` states its own, facts §1.3 Pooling):
1. A connection is only ever shared by tunnels with the same ``PoolKey``: source identity, the
   destination identities it was verified against, destination address, source IP.
2. A connection carries at most ``min(max_streams_per_connection, peer's
   SETTINGS_MAX_CONCURRENT_STREAMS)`` live tunnels; the next opener gets a new connection.
3. Per key at most one dial is in flight: concurrent openers wait for it and then share it,
   instead of each dialling its own.
4. A connection that got or sent GOAWAY, or was lost, is never handed out again.
5. A connection with no tunnel for ``idle_timeout_s`` is closed and dropped.
6. Every failure to get a tunnel is a ``TunnelError``: the CONNECT's status as received, or
   503 for a dial, TLS or identity failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waypoint import packet_mark as mark
from waypoint.errors import TunnelError
from waypoint.hbone.adapter import HboneConnectionProtocol, ProtocolFactory
from waypoint.hbone.connection import HboneConnection, HboneSettings
from waypoint.hbone.events import Headers
from waypoint.hbone.stream import HboneStream

if TYPE_CHECKING:
    import ssl

    from waypoint.identity.spiffe import Identity


@dataclass(frozen=True, slots=True)
class PoolKey:
    """ztunnel's ``WorkloadKey`` (``ZT:src/proxy/h2/client.rs``)."""

    src_identity: Identity
    dst_identities: frozenset[Identity]
    dst: tuple[str, int]
    src_ip: str | None = None


class HbonePool:
    def __init__(
        self,
        context_for: Callable[[Identity], ssl.SSLContext],
        verify_server: Callable[[Any, frozenset[Identity]], object],
        *,
        max_streams_per_connection: int = 100,
        idle_timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        bind_source_ip: bool = False,
        settings: HboneSettings | None = None,
        keepalive_s: float = 10.0,
        ping_timeout_s: float = 20.0,
        packet_mark: int | None = None,
    ) -> None:
        self._context_for = context_for
        self._verify = verify_server
        self._max_streams = max_streams_per_connection
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._bind = bind_source_ip
        self._settings = settings or HboneSettings()
        self._keepalive = (keepalive_s, ping_timeout_s)
        self._mark = packet_mark  # SO_MARK on every dial: istio-cni lets marked sockets pass (facts §1.7)
        self._conns: dict[PoolKey, list[HboneConnectionProtocol]] = {}
        self._dialing: dict[PoolKey, asyncio.Future[HboneConnectionProtocol]] = {}
        self._idle_timers: dict[HboneConnectionProtocol, asyncio.TimerHandle] = {}
        self.connections_opened = 0

    @property
    def live_connections(self) -> int:
        return sum(len(v) for v in self._conns.values())

    def _cap(self, proto: HboneConnectionProtocol) -> int:
        return min(self._max_streams, proto.conn.max_outbound_streams)

    def _usable(self, proto: HboneConnectionProtocol) -> bool:
        alive = proto.transport is not None and not proto.conn.closing
        return alive and proto.active_streams < self._cap(proto)

    async def open(
        self, key: PoolKey, authority: str, headers: Headers, protocol_factory: ProtocolFactory
    ) -> tuple[HboneStream, asyncio.BaseProtocol]:
        """A tunnel to ``authority`` over a pooled connection for ``key``."""
        proto = await self._connection(key)
        timer = self._idle_timers.pop(proto, None)
        if timer is not None:
            timer.cancel()
        return await proto.open_stream(authority, headers, protocol_factory)

    async def _connection(self, key: PoolKey) -> HboneConnectionProtocol:
        while True:
            for proto in self._conns.get(key, ()):
                if self._usable(proto):
                    return proto
            dialing = self._dialing.get(key)
            if dialing is None:
                break
            with contextlib.suppress(TunnelError):  # invariant 3: share the dial in flight
                await asyncio.shield(dialing)
        future: asyncio.Future[HboneConnectionProtocol] = asyncio.get_running_loop().create_future()
        self._dialing[key] = future
        try:
            proto = await self._dial(key)
        except BaseException as exc:
            err = exc if isinstance(exc, TunnelError) else TunnelError(503, f"dial {key.dst}: {exc}")
            future.set_exception(err)
            future.exception()  # retrieved: waiters re-raise their own
            raise err from exc
        finally:
            del self._dialing[key]
        future.set_result(proto)
        return proto

    async def _dial(self, key: PoolKey) -> HboneConnectionProtocol:
        rejected: list[BaseException] = []

        def factory() -> HboneConnectionProtocol:
            return HboneConnectionProtocol(
                HboneConnection(client_side=True, settings=self._settings),
                verify_peer=lambda ssl_object: self._verify(ssl_object, key.dst_identities),
                on_rejected=lambda exc, _peer: rejected.append(exc),
                on_idle=lambda p: self._idle(key, p),
                keepalive_s=self._keepalive[0],
                ping_timeout_s=self._keepalive[1],
            )

        try:
            _transport, proto = await asyncio.wait_for(
                mark.connect(
                    factory, key.dst[0], key.dst[1], mark=self._mark, ssl=self._context_for(key.src_identity),
                    server_hostname="",  # no SNI, as ztunnel (facts §1.2)
                    local_addr=(key.src_ip, 0) if self._bind and key.src_ip else None,
                ),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise TunnelError(503, f"dial {key.dst}: {exc!r}") from exc
        if rejected:
            raise TunnelError(503, f"server identity rejected: {rejected[0]}")
        try:  # invariant 2 needs the peer's stream cap before the first CONNECT
            await asyncio.wait_for(asyncio.shield(proto.ready), self._connect_timeout_s)
        except TimeoutError as exc:
            proto._abort()
            raise TunnelError(503, f"no SETTINGS from {key.dst}") from exc
        if proto.transport is None:
            raise TunnelError(503, f"connection to {key.dst} lost during set-up")
        self.connections_opened += 1
        self._conns.setdefault(key, []).append(proto)
        proto.closed.add_done_callback(lambda _f: self._forget(key, proto))
        return proto

    def _idle(self, key: PoolKey, proto: HboneConnectionProtocol) -> None:
        """Invariant 5: the last tunnel ended; close after the idle timeout unless reused."""
        old = self._idle_timers.pop(proto, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._idle_timers[proto] = loop.call_later(self._idle_timeout_s, self._expire, proto)

    def _expire(self, proto: HboneConnectionProtocol) -> None:
        self._idle_timers.pop(proto, None)
        if proto.active_streams == 0 and proto.transport is not None:
            proto.conn.close(0)
            proto._check_drained()

    def _forget(self, key: PoolKey, proto: HboneConnectionProtocol) -> None:
        conns = self._conns.get(key)
        if conns is not None and proto in conns:
            conns.remove(proto)
            if not conns:
                del self._conns[key]
        timer = self._idle_timers.pop(proto, None)
        if timer is not None:
            timer.cancel()

    async def close(self, grace_s: float = 1.0) -> None:
        """GOAWAY every connection and wait for them to close."""
        protos = [p for conns in self._conns.values() for p in conns]
        await asyncio.gather(*(p.shutdown(grace_s) for p in protos))
        for timer in self._idle_timers.values():
            timer.cancel()
        self._idle_timers.clear()
