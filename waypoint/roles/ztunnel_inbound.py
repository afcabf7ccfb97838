"""ztunnel inbound: HBONE tunnels (15008 per local pod) and plaintext capture (15006).

HBONE, as ``ZT:src/proxy/inbound.rs`` ``serve_connect`` (facts §1.4): the CONNECT's
``:authority`` must name the local pod the client dialled (else 400), the app is dialled with
plain TCP at ``pod_ip:port``, and only once that connection is up is the tunnel answered 200;
a failed dial is 503 (response flag ``CONNECT``). Every refusal goes through
``TunnelRequest.refuse`` so the HBONE server logs it with the peer and the reason, and the
role's hook counts it in ``waypoint_refusals_total``.

Plaintext, as ``ZT:src/proxy/inbound_passthrough.rs``: the original destination must be a
local pod; the connection is spliced to it, reported with ``connection_security_policy``
``unknown``.

The app sees the client's IP, as with ztunnel's ``freebind_connect``: with
``settings.original_source`` the dial is transparent and bound to the client's address (the
HBONE peer, or the plaintext peer; :mod:`waypoint.original_source`, facts §1.7), and a dial that
fails for it is a 503 like any other. Without it, on one host, we bind the client pod's 127/8
address instead (when it is one), which needs no privilege.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from waypoint import packet_mark as mark
from waypoint.hbone.headers import parse_baggage
from waypoint.hbone.server import TunnelRequest
from waypoint.l4.origdst import original_destination
from waypoint.l4.plan import InboundPlan, plan_inbound
from waypoint.l4.relay import Relay
from waypoint.original_source import app_dial_source
from waypoint.telemetry.metrics import FLAG_CONNECT, traffic_labels
from waypoint.telemetry.peer_metadata import workload_baggage

if TYPE_CHECKING:
    from waypoint.roles.ztunnel import ZtunnelRole

log = logging.getLogger(__name__)


def refusal_reason(plan: InboundPlan) -> str:
    """A stable reason code for an inbound plan's refusal (logs, ``waypoint_refusals_total``)."""
    if plan.status == 400:
        return "authority_not_local" if plan.reason.startswith("IPMismatch") else "malformed_authority"
    if plan.reason.startswith("unknown local workload"):
        return "unknown_local_workload"
    return "no_upstream"


class Inbound:
    def __init__(self, role: ZtunnelRole) -> None:
        self.role = role

    # -- 15008 -----------------------------------------------------------------------------------
    async def on_tunnel(self, request: TunnelRequest) -> None:
        role = self.role
        local_ip = request.local_address[0]
        if local_ip not in role.local_pods:
            request.refuse(503, "unknown_local_workload", f"{local_ip} is not a pod on this node")
            return
        plan = plan_inbound(role.state, local_ip, request.authority, request.peer_identity)
        if not plan.accepted:
            request.refuse(plan.status, refusal_reason(plan), plan.reason)
            return
        assert plan.upstream is not None
        peer_ip = request.peer_address[0]
        source = role.state.workload_by_ip(peer_ip)
        # the source's own baggage describes it only where we cannot look it up (derived_source)
        sent = parse_baggage(v for k, v in request.headers if k == "baggage") if source is None else None
        labels = traffic_labels(
            reporter="destination", source=source, source_baggage=sent,
            source_principal=str(request.peer_identity) if request.peer_identity else None,
            destination=plan.destination_workload,
            destination_principal=str(role.state.identity_of(plan.destination_workload))
            if plan.destination_workload is not None else None,
            service=_guess_service(role, plan, request), mtls=True, cluster=role.settings.cluster_id,
        )
        relay = role.conns.new_relay()
        try:
            async with asyncio.timeout(role.settings.connect_timeout_s):
                await self._dial_app(relay, plan.upstream, peer_ip)
        except (OSError, TimeoutError) as exc:
            relay.fail(exc)
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            request.refuse(503, "dial_failed", f"{plan.upstream[0]}:{plan.upstream[1]}: {exc!r}")
            return
        except BaseException:
            relay.fail()
            raise
        try:
            request.accept(lambda: relay.downstream, self._answer_headers(plan))
        except Exception:
            relay.fail()
            raise
        role.conns.opened(relay, labels)

    async def _dial_app(self, relay: Relay, upstream: tuple[str, int], peer_ip: str) -> None:
        settings = self.role.settings
        local_addr, transparent = app_dial_source(
            peer_ip, upstream[0], original_source=settings.original_source, bind_loopback=settings.bind_client_ip
        )
        try:
            await mark.connect(lambda: relay.upstream, *upstream, mark=settings.packet_mark,
                               local_addr=local_addr, transparent=transparent)
        except OSError:
            if local_addr is None or transparent:  # a spoofed dial that fails is the dial's failure
                raise
            await mark.connect(lambda: relay.upstream, *upstream, mark=settings.packet_mark)

    def _answer_headers(self, plan: InboundPlan) -> tuple[tuple[str, str], ...]:
        """The 200's ``baggage``: the destination workload, as ztunnel's ``build_response`` with
        ``ENABLE_RESPONSE_BAGGAGE`` (default on; facts §1.4). Errors carry none, as there."""
        if plan.destination_workload is None:
            return ()
        return (("baggage", workload_baggage(plan.destination_workload, self.role.settings.cluster_id)),)

    # -- 15006 -----------------------------------------------------------------------------------
    def plaintext_factory(self) -> asyncio.BaseProtocol:
        return self.role.conns.new_relay(on_accept=self._plaintext).downstream

    def _plaintext(self, relay: Relay, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")[:2]
        try:
            dst = original_destination(transport.get_extra_info("socket"))
        except OSError as exc:
            relay.fail(exc)
            return
        if dst[0] not in self.role.local_pods:
            self.role.refused("inbound_plaintext", "unknown_local_workload", f"{peer} -> {dst}")
            relay.fail()
            return
        self.role.conns.spawn(self._run_plaintext(relay, peer, dst))

    async def _run_plaintext(self, relay: Relay, peer: tuple[str, int], dst: tuple[str, int]) -> None:
        try:
            await self._plaintext_upstream(relay, peer, dst)
        except BaseException:  # cancelled at shutdown
            relay.fail()
            raise

    async def _plaintext_upstream(self, relay: Relay, peer: tuple[str, int], dst: tuple[str, int]) -> None:
        role = self.role
        labels = traffic_labels(
            reporter="destination", source=role.state.workload_by_ip(peer[0]),
            destination=role.local_pods[dst[0]],
            destination_principal=str(role.state.identity_of(role.local_pods[dst[0]])),
            cluster=role.settings.cluster_id,
        )
        try:
            async with asyncio.timeout(role.settings.connect_timeout_s):
                await self._dial_app(relay, dst, peer[0])
        except (OSError, TimeoutError) as exc:
            relay.fail(exc)
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            log.info("inbound plaintext %s -> %s: dial failed %r", peer, dst, exc)
            return
        role.conns.opened(relay, labels)


def _guess_service(role: ZtunnelRole, plan: InboundPlan, request: TunnelRequest) -> object:
    """``destination_service`` from ``forwarded;host=`` among the local pod's services
    (ztunnel ``guess_inbound_service``, ``ZT:src/proxy.rs`` L703-735)."""
    if plan.destination_workload is None:
        return None
    forwarded = next((v for k, v in request.headers if k == "forwarded"), "")
    host = next((p.split("=", 1)[1].strip('"') for p in forwarded.split(";") if p.strip().startswith("host=")),
                None)
    services = role.state.services_of(plan.destination_workload)
    if host is not None:
        for svc in services:
            if svc.hostname == host:
                return svc
    return services[0] if len(services) == 1 else None
