"""The waypoint's upstream seam: endpoints in the mesh are reached over HBONE, others over TCP.

As Envoy's ``connect_originate`` (facts §2.4): the tunnel goes to ``<pod IP>:15008`` with
``:authority <pod IP>:<target port>``, the waypoint's own certificate, and the pod's identity
as the only SAN accepted. Waypoints add no ``forwarded`` or ``traceparent`` there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from waypoint.errors import TunnelError
from waypoint.hbone.headers import format_authority
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity.spiffe import Identity
from waypoint.l7.upstream import TcpConnector, UpstreamTarget

P = TypeVar("P", bound=asyncio.BaseProtocol)

HBONE_PORT = 15008


class HboneConnector:
    """``Connector`` for the router and the L4 relay of a waypoint."""

    def __init__(
        self, pool: HbonePool, identity: Identity, *, hbone_port: int = HBONE_PORT, source_ip: str | None = None
    ) -> None:
        self._pool = pool
        self._identity = identity
        self._hbone_port = hbone_port
        # Dial from the waypoint's own address (its pod IP): the destination ztunnel dials the app
        # from the TCP peer's IP, so the app sees the waypoint (facts §2.4 "Destination ztunnel").
        self._source_ip = source_ip
        self._tcp = TcpConnector()
        self._peers: dict[str, frozenset[Identity]] = {}

    async def connect(self, target: UpstreamTarget, protocol_factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
        if target.identity is None:  # not in the mesh: plain TCP, as the waypoint's passthrough
            return await self._tcp.connect(target, protocol_factory)
        key = PoolKey(
            self._identity, self._expected(target.identity), (target.address, self._hbone_port), self._source_ip
        )
        try:
            stream, protocol = await self._pool.open(
                key, format_authority(target.address, target.port), (), protocol_factory
            )
        except TunnelError as exc:
            raise ConnectionRefusedError(f"HBONE to {target.address}:{target.port}: {exc}") from exc
        return stream, protocol  # type: ignore[return-value]

    def _expected(self, spiffe: str) -> frozenset[Identity]:
        found = self._peers.get(spiffe)
        if found is None:
            found = self._peers[spiffe] = frozenset({Identity.parse(spiffe)})
        return found
