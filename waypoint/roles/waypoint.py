"""The waypoint role: terminate HBONE, run each tunnel's inner HTTP through the filter chain (or
relay it as TCP), and re-originate HBONE to the chosen endpoint.

Shape of Istio's Envoy waypoint (facts §2.4): ``connect_terminate`` on 15008 (any client of the
trust domain; its identity goes to the filters), ``main_internal`` keyed on the ``:authority``
(a service VIP:port, or a pod IP:port for workload-addressed traffic), then ``connect_originate``
to ``<pod IP>:15008`` with ``:authority <pod IP>:<target port>``.

AuthorizationPolicy (``targetRefs`` to this Gateway, its GatewayClass, or a Service it serves;
facts §3.2) is compiled once per snapshot into a :class:`WaypointAuthorizer`. HTTP requests meet
it in the RBAC filter, first in the chain (:mod:`waypoint.l7.filters.rbac`: 403
``RBAC: access denied``); opaque TCP meets it before the upstream is dialled, as Envoy's network
RBAC filter in ``main_internal`` (facts §2.4): the CONNECT was already answered 200 there (the
``connect_terminate`` tcp_proxy reached the internal listener), then the connection is closed
(``docs/root/intro/arch_overview/security/rbac_filter.rst``: "the connection will be closed").
Those filters and their per-snapshot swap are :class:`~waypoint.roles.waypoint_policies.WaypointPolicies`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from waypoint.hbone.headers import parse_forwarded_for
from waypoint.hbone.pool import HbonePool
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.identity.certs import CertificateProvider
from waypoint.identity.spiffe import Identity
from waypoint.l4.relay import Relay
from waypoint.l7.chain import FilterChain
from waypoint.l7.endpoints import RoundRobinPicker
from waypoint.l7.filter import DownstreamInfo, Filter
from waypoint.l7.filters.access_log import LogSinks
from waypoint.l7.filters.forwarded import Forwarded
from waypoint.l7.filters.istio_stats import IstioRequestMetrics
from waypoint.l7.filters.rbac import AuthzDownstream
from waypoint.l7.filters.request_id import RequestId
from waypoint.l7.h1_server import Http1ServerProtocol
from waypoint.l7.h2_pool import ProtocolPool
from waypoint.l7.h2_server import Http2ServerProtocol
from waypoint.l7.loader import load_filters
from waypoint.l7.response_flags import NO_HEALTHY_UPSTREAM, UPSTREAM_CONNECTION_FAILURE
from waypoint.l7.router import Router
from waypoint.l7.routing.decision import RequestView, RouteDecision, ServiceRef
from waypoint.l7.upstream import UpstreamTarget
from waypoint.mesh.model import Waypoint
from waypoint.mesh.state import MeshState
from waypoint.policy.attributes import ConnectionFacts, Decision
from waypoint.policy.extauthz import ExtAuthzClients
from waypoint.roles.hbone_connector import HboneConnector
from waypoint.roles.inner import SniffingProtocol
from waypoint.roles.waypoint_config import HTTP_PROTOCOLS, WaypointConfig
from waypoint.roles.waypoint_policies import WaypointPolicies
from waypoint.telemetry.metrics import TcpMetrics
from waypoint.telemetry.waypoint_tcp import WaypointTcpMetrics

log = logging.getLogger(__name__)

HBONE_PORT = 15008
FILTERS_ANNOTATION = "waypoint.io/filters"
"""Gateway annotation: a JSON/YAML list of ``{name, config}`` filters run before the router."""


@dataclass(frozen=True, slots=True)
class WaypointSettings:
    namespace: str
    name: str
    address: str  # where 15008 listens (the waypoint's pod/dev address)
    port: int = HBONE_PORT
    trust_domain: str = "cluster.local"
    sniff_timeout_s: float = 0.5
    keepalive_s: float = 10.0
    ping_timeout_s: float = 20.0
    root_namespace: str = "istio-system"  # AuthorizationPolicy's mesh-wide namespace (facts §3.2)
    default_access_log: str | None = None  # access log path when neither mesh config nor Telemetry says


class _CurrentConfig:
    """Indirection so long-lived filters see the newest snapshot on their next request.

    ``resolve`` is the current tables' own method with the RNG bound (``functools.partial``,
    called in C): the router calls it for every request, so no Python frame is added here."""

    def __init__(self, config: WaypointConfig, rng: random.Random) -> None:
        self._rng = rng
        self.swap(config)

    def swap(self, config: WaypointConfig) -> None:
        self.config = config
        self.resolve: Callable[[RequestView], RouteDecision] = functools.partial(config.routes.resolve, rng=self._rng)

    def endpoints(self, ref: ServiceRef) -> Sequence[UpstreamTarget]:
        return self.config.endpoints(ref)


class WaypointRole:
    """One waypoint (a Gateway of class ``istio-waypoint``), serving HBONE on its address."""

    def __init__(
        self,
        settings: WaypointSettings,
        state: MeshState,
        certificates: CertificateProvider,
        *,
        identity: Identity | None = None,
        extra_filters: Sequence[Filter] = (),
        authorization: Sequence[Filter] = (),
        telemetry: Sequence[Filter] = (),
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        log_sinks: LogSinks | None = None,
    ) -> None:
        """``registry``: count ``istio_requests_total`` there (none: no per-request metrics).
        ``log_sinks``: the process's access-log files (shared by waypoints in one process)."""
        self.settings = settings
        self.identity = identity or self._identity_from(state, settings)
        self._certs = certificates
        self._current = _CurrentConfig(WaypointConfig.build(state), rng or random.Random())
        cert = certificates.certificate_for(self.identity)
        self._server_ctx = tls.server_context(cert)
        self._client_ctx = tls.client_context(cert)
        self.pool = HbonePool(
            lambda _identity: self._client_ctx,
            tls.verify_server,
            keepalive_s=settings.keepalive_s,
            ping_timeout_s=settings.ping_timeout_s,
            bind_source_ip=True,
        )
        source_ip = None if settings.address in ("0.0.0.0", "::", "") else settings.address
        self.connector = HboneConnector(self.pool, self.identity, source_ip=source_ip)
        self.upstreams = ProtocolPool(self.connector)
        self.router = Router(self._current, RoundRobinPicker(self._current.endpoints), self.upstreams)
        # the mesh config's ext-authz providers, reached as the router's upstreams are (HBONE to ambient pods)
        self.ext_authz_clients = ExtAuthzClients(self.connector)
        self.policies = WaypointPolicies(settings, state, self.identity, self.ext_authz_clients, log_sinks)
        p = self.policies  # its filters, named on the role too (the chain, the TCP path and tests use them)
        self.ext_authz, self.rbac, self.jwt_authn, self.jwt_keys = p.ext_authz, p.rbac, p.jwt_authn, p.jwt_keys
        self.access_log = p.access_log
        self.registry = registry
        self.tcp_metrics = WaypointTcpMetrics(TcpMetrics(registry)) if registry is not None else None
        if registry is not None:
            telemetry = (*telemetry, IstioRequestMetrics(registry, cluster_domain=state.cluster_domain))
        # Istio's order (buildWaypointHTTPFilters): ext_authz (CUSTOM, the given ``authorization``
        # filters), then RBAC, before everything else
        self._filters = chain_order((self.ext_authz, *authorization, self.jwt_authn, self.rbac),
                                    self._configured_filters(state),
                                    extra_filters, telemetry)
        self.chain = self._build_chain()
        self.server = HboneServer(
            lambda _ip: self._server_ctx,
            lambda ssl_object: tls.verify_client(ssl_object, settings.trust_domain),
            self._on_tunnel,
            self._on_refused,
            keepalive_s=settings.keepalive_s,
            ping_timeout_s=settings.ping_timeout_s,
        )
        self.refusals: dict[str, int] = {}

    @staticmethod
    def _identity_from(state: MeshState, settings: WaypointSettings) -> Identity:
        wp = state.waypoint(settings.namespace, settings.name)
        sa = wp.service_account if wp is not None else settings.name
        return Identity(settings.trust_domain, settings.namespace, sa)

    def _build_chain(self) -> FilterChain:
        """The filters, with the access log last when one is configured (no cost otherwise)."""
        filters = [*self._filters, self.access_log] if self.access_log.enabled else self._filters
        return FilterChain(filters, self.router)

    def _configured_filters(self, state: MeshState) -> list[Filter]:
        import yaml

        for obj in state.snapshot.objects("Gateway"):
            if (obj.namespace, obj.name) == (self.settings.namespace, self.settings.name):
                text = obj.annotations.get(FILTERS_ANNOTATION)
                if text:
                    specs = yaml.safe_load(text)
                    return load_filters(specs if isinstance(specs, list) else [])
        return []

    # ---- lifecycle ----
    async def start(self, *, reuse_port: bool = False) -> None:
        self.jwt_keys.start()
        await self.server.listen(self.settings.address, self.settings.port, reuse_port=reuse_port)
        log.info(
            "waypoint %s/%s serving HBONE on %s:%d as %s",
            self.settings.namespace, self.settings.name, self.settings.address, self.settings.port, self.identity,
        )

    def update(self, state: MeshState) -> None:
        """A new snapshot: new routes, endpoints and policies apply from the next request on."""
        self._current.swap(WaypointConfig.build(state))
        self.policies.apply(state)
        if self.access_log.enabled != (self.access_log in self.chain.filters):
            self.chain = self._build_chain()  # access log turned on or off: new connections see it

    def rotate(self) -> None:
        """New certificate for new handshakes; live connections keep theirs."""
        cert = self._certs.certificate_for(self.identity)
        tls.update_context(self._server_ctx, cert)
        tls.update_context(self._client_ctx, cert)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.close(grace_s)
        await self.policies.aclose()
        self.access_log.sinks.flush()
        self.upstreams.close()
        await self.pool.close()

    # ---- tunnels ----
    def _on_refused(self, reason: str, detail: str, peer: tuple[str, int]) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    async def _on_tunnel(self, request: TunnelRequest) -> None:
        target = request.parsed
        if target is None or not target.is_ip:
            request.reject(400)
            return
        config = self._current.config
        state = config.state
        service = state.service_by_vip(target.host)
        dialled = ServiceRef(service.namespace, service.name, target.port) if service is not None else None
        protocol = config.protocol_of(service, target.port) if service is not None else ""
        peer = self._client_address(request)
        info = AuthzDownstream(
            peer_address=peer,
            peer_identity=str(request.peer_identity) if request.peer_identity else None,
            dialled=dialled,
            destination=(target.host, target.port),
            source_namespace=request.peer_identity.namespace if request.peer_identity else None,
            connection=ConnectionFacts(peer[0], request.peer_identity, target.host, target.port),
            service=service,
            source_workload=state.workload_by_ip(peer[0]),  # telemetry's peer labels (istio_stats)
            destination_workload=state.workload_by_ip(target.host) if service is None else None,
        )
        if protocol in HTTP_PROTOCOLS:  # HTTP/1.1 or h2c prior knowledge, as Envoy's codec AUTO
            request.accept(lambda: SniffingProtocol(self._inner_choice(info, http=True), None))
        elif protocol == "":
            request.accept(lambda: SniffingProtocol(self._inner_choice(info), self.settings.sniff_timeout_s))
        else:
            await self._relay_tcp(request, info)

    @staticmethod
    def _client_address(request: TunnelRequest) -> tuple[str, int]:
        for name, value in request.headers:
            if name == "forwarded":
                found = parse_forwarded_for(value)
                if found is not None:
                    return (found[0], found[1] or 0)
        return request.peer_address

    def _inner_choice(self, info: DownstreamInfo, *, http: bool = False) -> Callable[[str], asyncio.BaseProtocol]:
        """The protocol for a tunnel once its first bytes are known; a port declared HTTP stays HTTP."""

        def choose(protocol: str) -> asyncio.BaseProtocol:
            if protocol == "h2":
                return Http2ServerProtocol(self.chain, info)
            if protocol == "http/1.1" or http:
                return Http1ServerProtocol(self.chain, info)
            relay = Relay()
            asyncio.get_running_loop().create_task(self._connect_relay(relay, info))
            return relay.downstream

        return choose

    def _tcp_target(self, info: DownstreamInfo) -> UpstreamTarget | None:
        """Opaque TCP goes to an endpoint of the dialled service (the router's picker), or to the pod dialled."""
        if info.dialled is not None:
            return self.router.picker.pick(info.dialled)
        assert info.destination is not None
        ip, port = info.destination
        state = self._current.config.state
        workload = state.workload_by_ip(ip)
        if workload is None:
            return None
        identity = str(state.identity_of(workload)) if state.is_ambient(workload) else None
        return UpstreamTarget(ip, port, None, identity=identity, workload=workload)

    async def _dial(self, relay: Relay, info: DownstreamInfo) -> BaseException | None:
        """Connect the relay's upstream end; the error, or None once it is up."""
        started, target = self.access_log.clock(), self._tcp_target(info)
        if target is None:
            if self.tcp_metrics is not None:
                self.tcp_metrics.failed(info, None)
            self.access_log.tcp_failed(info, None, started, NO_HEALTHY_UPSTREAM)
            return ConnectionRefusedError("no healthy upstream")
        try:
            await self.connector.connect(target, lambda: relay.upstream)
        except (OSError, TimeoutError) as exc:
            log.info("waypoint TCP upstream %s:%d failed: %s", target.address, target.port, exc)
            if self.tcp_metrics is not None:
                self.tcp_metrics.failed(info, target)
            self.access_log.tcp_failed(info, target, started, UPSTREAM_CONNECTION_FAILURE)
            return exc
        if self.tcp_metrics is not None:  # istio_tcp_* with reporter="waypoint"
            self.tcp_metrics.connected(relay, info, target)
        self.access_log.tcp_connected(relay, info, target, started)  # after the metrics: it chains on_done
        return None

    def _tcp_denied(self, info: DownstreamInfo) -> Decision | None:
        """Envoy's network RBAC for an opaque TCP tunnel (:meth:`WaypointPolicies.tcp_denied`): the
        deny, counted as a refusal, or None when allowed."""
        decision = self.policies.tcp_denied(info)
        if decision is not None:
            self.refusals["authorization_denied"] = self.refusals.get("authorization_denied", 0) + 1
        return decision

    async def _relay_tcp(self, request: TunnelRequest, info: DownstreamInfo) -> None:
        """TCP: dial first, answer 200 only once the upstream is up (server-first protocols work).
        A denied tunnel is answered 200 and closed at once, with no upstream ever dialled (Envoy's
        network RBAC behind ``connect_terminate``)."""
        relay = Relay()
        if self._tcp_denied(info) is not None:
            request.accept(lambda: relay.downstream)
            relay.fail()
            return
        if await self._dial(relay, info) is not None:
            request.reject(503)
            return
        request.accept(lambda: relay.downstream)

    async def _connect_relay(self, relay: Relay, info: DownstreamInfo) -> None:
        """Sniffed TCP: the tunnel is already accepted; a failed dial (or a deny) ends it."""
        if self._tcp_denied(info) is not None:
            relay.fail()
            return
        error = await self._dial(relay, info)
        if error is not None:
            relay.fail(error)

    def config_dump(self) -> Mapping[str, Any]:
        return {
            "waypoint": f"{self.settings.namespace}/{self.settings.name}",
            "address": f"{self.settings.address}:{self.settings.port}",
            "identity": str(self.identity),
            "hbone_connections_opened": self.pool.connections_opened,
            "refusals": dict(self.refusals),
            **self.policies.dump(),
            "routes": self._current.config.status_dump(),
        }


def chain_order(
    authorization: Sequence[Filter],
    configured: Sequence[Filter],
    extra: Sequence[Filter],
    telemetry: Sequence[Filter],
) -> list[Filter]:
    """The waypoint's filters in Istio's order (``IS:pilot/pkg/networking/core/listener_waypoint.go``
    ``buildWaypointHTTPFilters``): authorization first (ext_authz for CUSTOM, jwt_authn, then RBAC), so a denied
    request costs nothing else; then request ids and x-forwarded-*, the Gateway's configured filters
    and any given in code; telemetry last before the router, so it sees every request that was routed."""
    return [*authorization, RequestId(), Forwarded(), *configured, *extra, *telemetry]


def waypoint_address(state: MeshState, wp: Waypoint) -> str | None:
    addresses = state.waypoint_addresses(wp)
    return addresses[0] if addresses else None


