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

AuthorizationPolicy runs on both before the app is dialled (``assert_rbac`` in ``serve_connect``
and in ``proxy_inbound_plaintext``; facts §1.1 15006 row, §1.4, §3.2). The facts are the
connection's: the mTLS peer identity (none on plaintext) and the peer IP as source, the local
pod and the target port (``:authority``'s, or the original destination's) as destination. A
deny is a 401 on HBONE (refusal reason ``authorization_denied``) and a closed connection on
plaintext; either way the Istio TCP metrics count it opened and closed with
``response_flags="DENY"`` (``ZT:src/proxy/metrics.rs`` ``ResponseFlags::AuthorizationPolicyDenied``,
recorded with ``record_with_flag``). Allowed connections are remembered while they live so a
policy change can close those no longer allowed (:meth:`Inbound.recheck`, ztunnel's ``PolicyWatcher``).

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
from waypoint.policy.attributes import ConnectionFacts, Decision
from waypoint.telemetry.metrics import FLAG_CONNECT, FLAG_DENY, traffic_labels
from waypoint.telemetry.peer_metadata import workload_baggage

if TYPE_CHECKING:
    from waypoint.mesh.model import Workload
    from waypoint.roles.ztunnel import ZtunnelRole

log = logging.getLogger(__name__)


def refusal_reason(plan: InboundPlan) -> str:
    """A stable reason code for an inbound plan's refusal (logs, ``waypoint_refusals_total``)."""
    if plan.status == 400:
        return "authority_not_local" if plan.reason.startswith("IPMismatch") else "malformed_authority"
    if plan.reason.startswith("unknown local workload"):
        return "unknown_local_workload"
    return "no_upstream"


def denial_detail(decision: Decision, applied: list[str] | None = None) -> str:
    """The log text of a deny: why, and which policy decided; when no ALLOW matched, the policies
    that applied (ztunnel logs the policy it matched, or that none allowed)."""
    if decision.policy:
        reason = decision.reason or "denied"
        return reason if decision.policy in reason else f"{reason}; policy {decision.policy}"
    return f"{decision.reason or 'denied'}; no ALLOW policy matched among {', '.join(applied or []) or 'none'}"


class Inbound:
    def __init__(self, role: ZtunnelRole) -> None:
        self.role = role
        # live, allowed connections: what they were checked with (local pod IP, facts), for recheck()
        self.checked: dict[Relay, tuple[str, ConnectionFacts]] = {}

    # -- authorization ---------------------------------------------------------------------------
    def authorize(self, workload: Workload, facts: ConnectionFacts, where: str) -> Decision:
        """The policy decision for one inbound connection (dry-run denials are only logged)."""
        decision = self.role.authz.check(workload, facts)
        if decision.dry_run_denied_by:
            log.info("%s %s -> %s:%d: dry-run policy %s would deny", where, facts.source_identity or facts.source_ip,
                     facts.destination_ip, facts.destination_port, ", ".join(decision.dry_run_denied_by))
        return decision

    def track(self, relay: Relay, pod_ip: str, facts: ConnectionFacts) -> None:
        """Remember an allowed connection while it lives; finished ones are dropped as we go."""
        checked = self.checked
        checked[relay] = (pod_ip, facts)
        if len(checked) > 2 * len(self.role.conns.live) + 64:
            for done in [r for r in checked if r.done]:
                del checked[done]

    def recheck(self) -> None:
        """After a policy change: close the live connections the new policies deny, as ztunnel's
        ``PolicyWatcher`` (``ZT:src/proxy/connection_manager.rs``): "connection closed because it's
        no longer allowed after a policy update" (``AuthorizationPolicyLateRejection``)."""
        role = self.role
        for relay, (pod_ip, facts) in list(self.checked.items()):
            workload = role.local_pods.get(pod_ip)
            if relay.done or workload is None:
                del self.checked[relay]
                continue
            decision = role.authz.check(workload, facts)
            if not decision.allowed:
                del self.checked[relay]
                log.info("inbound %s -> %s:%d closed because it's no longer allowed after a policy update: %s",
                         facts.source_identity or facts.source_ip, facts.destination_ip, facts.destination_port,
                         denial_detail(decision, role.authz.policy_names(workload)))
                relay.abort()

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
        workload = plan.destination_workload or role.local_pods[local_ip]
        facts = ConnectionFacts(peer_ip, request.peer_identity, plan.upstream[0], plan.upstream[1])
        decision = self.authorize(workload, facts, "inbound")
        if not decision.allowed:  # before the app is dialled (ZT:src/proxy/inbound.rs assert_rbac)
            role.metrics.connection_failed(labels, FLAG_DENY)
            request.refuse(401, "authorization_denied", denial_detail(decision, role.authz.policy_names(workload)))
            return
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
        self.track(relay, local_ip, facts)

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
        workload = role.local_pods[dst[0]]
        labels = traffic_labels(
            reporter="destination", source=role.state.workload_by_ip(peer[0]),
            destination=workload,
            destination_principal=str(role.state.identity_of(workload)),
            cluster=role.settings.cluster_id,
        )
        # no identity on plaintext: a policy needing a principal never allows it (facts §1.1, 15006)
        facts = ConnectionFacts(peer[0], None, dst[0], dst[1])
        decision = self.authorize(workload, facts, "inbound_plaintext")
        if not decision.allowed:  # ZT:src/proxy/inbound_passthrough.rs: closed, counted with DENY
            role.metrics.connection_failed(labels, FLAG_DENY)
            detail = denial_detail(decision, role.authz.policy_names(workload))
            role.refused("inbound_plaintext", "authorization_denied", f"{peer} -> {dst}: {detail}")
            relay.fail()
            return
        try:
            async with asyncio.timeout(role.settings.connect_timeout_s):
                await self._dial_app(relay, dst, peer[0])
        except (OSError, TimeoutError) as exc:
            relay.fail(exc)
            role.metrics.connection_failed(labels, FLAG_CONNECT)
            log.info("inbound plaintext %s -> %s: dial failed %r", peer, dst, exc)
            return
        role.conns.opened(relay, labels)
        self.track(relay, dst[0], facts)


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
