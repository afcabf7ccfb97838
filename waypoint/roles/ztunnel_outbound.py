"""ztunnel outbound: captured connections (15001) and SOCKS5 (15080) to their destination.

Accept, decide, connect, splice (``ZT:src/proxy/outbound.rs`` ``proxy_to``): the client's
connection is accepted into a :class:`Relay` at once (early bytes are held, bounded); a small
task identifies the source workload from the peer address, asks :func:`plan_outbound` where to
go, opens an HBONE tunnel through the pool or a plain TCP connection with the relay's upstream
side as its protocol, and from then on bytes flow by callbacks only.

Source identification as ztunnel does for a captured pod: the connection's source IP is the
pod's. On one host every pod has its own 127/8 address, so a client that binds to it
(``curl --interface 127.0.10.5``) speaks as that pod. A client at an address that is no local
pod gets the dev identity in dev mode and is refused otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from waypoint import packet_mark as mark
from waypoint.errors import TunnelError
from waypoint.hbone.headers import build_forwarded, new_traceparent
from waypoint.hbone.pool import PoolKey
from waypoint.l4.origdst import original_destination
from waypoint.l4.plan import OutboundPlan, PlanKind, plan_outbound
from waypoint.l4.relay import Relay
from waypoint.l4.socks5 import Reply, Socks5Connect
from waypoint.telemetry.metrics import FLAG_CONNECT, traffic_labels
from waypoint.telemetry.peer_metadata import workload_baggage

if TYPE_CHECKING:
    from waypoint.identity.spiffe import Identity
    from waypoint.mesh.model import Workload
    from waypoint.roles.ztunnel import ZtunnelRole

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one outbound attempt ended: ``reply`` is the SOCKS5 code it stands for."""

    reply: Reply
    reason: str = ""
    bound: tuple[str, int] = ("0.0.0.0", 0)

    @property
    def ok(self) -> bool:
        return self.reply is Reply.SUCCEEDED


def _status_reply(status: int) -> Reply:
    if status in (401, 403):
        return Reply.NOT_ALLOWED
    if status == 503:
        return Reply.CONNECTION_REFUSED
    return Reply.GENERAL_FAILURE


class Outbound:
    def __init__(self, role: ZtunnelRole) -> None:
        self.role = role

    # -- 15001: captured -------------------------------------------------------------------------
    def captured_factory(self) -> asyncio.BaseProtocol:
        return self.role.conns.new_relay(on_accept=self._captured).downstream

    def _captured(self, relay: Relay, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        try:
            dst = original_destination(sock)
        except OSError as exc:
            relay.fail(exc)
            return
        if self.role.is_own_listener(dst):  # not redirected: it dialled 15001 itself
            self.role.refused("outbound", "no_original_destination", f"{peer} dialled the capture port")
            relay.fail()
            return
        self.role.conns.spawn(self._run_captured(relay, peer[:2], dst))

    async def _run_captured(self, relay: Relay, peer: tuple[str, int], dst: tuple[str, int]) -> None:
        try:
            outcome = await self.connect(relay, peer, dst[0], dst[1], None)
        except BaseException:  # cancelled at shutdown: the client must not be left open
            relay.fail()
            raise
        if not outcome.ok:
            relay.fail()

    # -- 15080: SOCKS5 ---------------------------------------------------------------------------
    def on_socks5(self, request: Socks5Connect) -> None:
        self.role.conns.spawn(self._run_socks5(request))

    async def _run_socks5(self, request: Socks5Connect) -> None:
        relay = self.role.conns.new_relay()
        host, port = request.request.host, request.request.port
        is_ip = _is_ip(host)
        try:
            outcome = await self.connect(
                relay, request.peername, host if is_ip else None, port, None if is_ip else host
            )
        except BaseException:  # cancelled at shutdown: answer and close the client
            relay.fail()
            request.refuse(Reply.GENERAL_FAILURE)
            raise
        if outcome.ok:
            request.succeed(relay, outcome.bound)
        else:
            relay.fail()
            request.refuse(outcome.reply)

    # -- the shared decision ---------------------------------------------------------------------
    async def connect(
        self, relay: Relay, peer: tuple[str, int], dst_ip: str | None, dst_port: int, hostname: str | None
    ) -> Outcome:
        """Identify the source, plan, reach the upstream with ``relay.upstream`` as its protocol."""
        role = self.role
        source, identity = role.source_of(peer[0])
        if identity is None:
            role.refused("outbound", "unknown_source", f"{peer[0]} is no local pod and dev mode is off")
            return Outcome(Reply.NOT_ALLOWED, "unknown_source")
        plan = plan_outbound(role.state, source, dst_ip, dst_port, hostname=hostname, pick=role.picker)
        labels = traffic_labels(
            reporter="source", source=source, source_principal=str(identity),
            destination=plan.destination_workload,
            destination_principal=str(plan.expected_identities[0]) if plan.expected_identities else None,
            service=plan.destination_service, mtls=plan.kind is PlanKind.HBONE, cluster=role.settings.cluster_id,
        )
        if plan.kind is PlanKind.REFUSE:
            role.refused("outbound", plan.reason.replace(" ", "_"), f"{peer} -> {dst_ip or hostname}:{dst_port}")
            role.metrics.connection_failed(labels)
            return Outcome(Reply.HOST_UNREACHABLE, plan.reason)
        assert plan.next_hop is not None
        if plan.kind is not PlanKind.HBONE and role.is_own_listener(plan.next_hop):
            role.refused("outbound", "loop", f"{peer} -> {plan.next_hop} is this ztunnel")
            return Outcome(Reply.NOT_ALLOWED, "loop")
        try:
            async with asyncio.timeout(role.settings.connect_timeout_s):
                bound = await self._reach(relay, plan, source, identity, peer)
        except TunnelError as exc:
            log.info("outbound %s -> %s: tunnel refused %s", peer, plan.authority, exc)
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            return Outcome(_status_reply(exc.status), f"tunnel {exc.status}")
        except socket.gaierror as exc:
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            log.info("outbound %s -> %s: %s", peer, plan.next_hop, exc)
            return Outcome(Reply.HOST_UNREACHABLE, "unresolvable")
        except (OSError, TimeoutError) as exc:
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            log.info("outbound %s -> %s: dial failed %r", peer, plan.next_hop, exc)
            refused = isinstance(exc, ConnectionRefusedError)
            return Outcome(Reply.CONNECTION_REFUSED if refused else Reply.HOST_UNREACHABLE, "dial failed")
        role.conns.opened(relay, labels)
        log.debug("outbound %s -> %s via %s (%s)", peer, plan.authority or plan.next_hop, plan.kind.value,
                  plan.reason)
        return Outcome(Reply.SUCCEEDED, plan.reason, bound)

    async def _reach(
        self, relay: Relay, plan: OutboundPlan, source: Workload | None, identity: Identity,
        peer: tuple[str, int],
    ) -> tuple[str, int]:
        assert plan.next_hop is not None
        if plan.kind is PlanKind.HBONE:
            assert plan.authority is not None
            src_ip = peer[0] if source is not None else None
            key = PoolKey(identity, frozenset(plan.expected_identities), plan.next_hop, src_ip)
            await self.role.pool.open(key, plan.authority, self._headers(plan, source, peer),
                                      lambda: relay.upstream)
            return ("0.0.0.0", 0)
        transport, _ = await mark.connect(
            lambda: relay.upstream, *plan.next_hop, mark=self.role.settings.packet_mark
        )
        sockname = transport.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    def _headers(self, plan: OutboundPlan, source: Workload | None, peer: tuple[str, int]) -> tuple[
        tuple[str, str], ...
    ]:
        """baggage, forwarded and traceparent, as ztunnel's ``create_hbone_request`` (facts §1.4)."""
        headers: list[tuple[str, str]] = []
        if source is not None:
            baggage = workload_baggage(source, self.role.settings.cluster_id)
            if baggage:
                headers.append(("baggage", baggage))
        host = plan.destination_service.hostname if plan.destination_service is not None else None
        headers.append(("forwarded", build_forwarded(peer[0], peer[1], host)))
        headers.append(("traceparent", new_traceparent()))
        return tuple(headers)


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
