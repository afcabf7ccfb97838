"""The ztunnel role: the composition root for L4 (ports and behaviour of facts §1.1).

Like ztunnel's ``ProxyInputs`` (``ZT:src/proxyfactory.rs``), one bundle of inputs (mesh
state, certificates, the HBONE pool, metrics) is shared by the parts:

* outbound capture on 15001 and SOCKS5 on 15080 (:mod:`waypoint.roles.ztunnel_outbound`);
* inbound HBONE on ``<pod IP>:15008`` for every local pod, as in-pod ztunnel binds per pod
  netns, and plaintext capture on 15006 (:mod:`waypoint.roles.ztunnel_inbound`);
* readiness (15021), Prometheus (15020) and the localhost admin port (15000).

Readiness is ztunnel's: 200 once nothing is pending, a pod whose HBONE listener cannot be
bound included (:mod:`waypoint.roles.pod_listeners`).

Local pods are the enrolled (ambient) pods of ``settings.node`` (every node when None),
waypoint instances excepted (they terminate HBONE themselves). A new snapshot (:meth:`apply`)
opens listeners for pods that appeared and closes those of pods that went away.

Everything is constructible in-process with explicit arguments (``waypoint dev`` and the
tests run it that way); :mod:`waypoint.roles.ztunnel_cli` is the command-line face.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from waypoint import packet_mark as mark
from waypoint.hbone.pool import HbonePool
from waypoint.hbone.server import HboneServer
from waypoint.identity import tls
from waypoint.identity.certs import CertificateProvider, WorkloadCertificate
from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity
from waypoint.l4.plan import RoundRobinPicker
from waypoint.l4.socks5 import Socks5Protocol
from waypoint.mesh.model import HBONE_PORT, MeshSnapshot, Workload
from waypoint.mesh.state import MeshState
from waypoint.original_source import check_original_source
from waypoint.policy.authz import ZtunnelAuthorizer
from waypoint.roles.pod_listeners import FailedBind, PodListeners
from waypoint.roles.ztunnel_conns import ConnectionTracker
from waypoint.roles.ztunnel_inbound import Inbound
from waypoint.roles.ztunnel_outbound import Outbound
from waypoint.telemetry.admin import HttpEndpoint, config_dump_routes, metrics_routes, readiness_routes
from waypoint.telemetry.metrics import TcpMetrics

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ZtunnelSettings:
    """Where to listen and how to behave. A listener set to None is not opened; port 0 picks one."""

    node: str | None = None  # serve the pods of this node (None: every pod in the config)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    dev: bool = False  # clients at no pod address speak as dev_identity instead of being refused
    dev_identity: Identity | None = None  # default spiffe://<td>/ns/default/sa/default
    outbound: Address | None = ("127.0.0.1", 15001)
    socks5: Address | None = ("127.0.0.1", 15080)
    inbound_plaintext: Address | None = ("127.0.0.1", 15006)
    hbone_port: int = HBONE_PORT  # bound on every local pod IP
    readiness: Address | None = ("0.0.0.0", 15021)
    metrics: Address | None = ("0.0.0.0", 15020)
    admin: Address | None = ("127.0.0.1", 15000)
    connect_timeout_s: float = 10.0
    keepalive_s: float = 10.0  # HBONE PING interval (facts §1.3)
    ping_timeout_s: float = 20.0
    metrics_flush_s: float = 5.0
    bind_client_ip: bool = True  # outbound HBONE and app dials from the client pod's 127/8 IP
    bind_retry_s: float = 0.5  # a failed <pod IP>:15008 bind is retried after this, doubling...
    bind_retry_max_s: float = 10.0  # ...up to this
    # SO_MARK on every socket we forward with (HBONE, passthrough, app dials) and on the capture
    # listeners, as in-pod ztunnel (ZT:src/inpod/config.rs L84-120): istio-cni's rules let 0x539
    # pass instead of capturing our own dials (facts §1.7). Needs CAP_NET_ADMIN; None: unmarked.
    packet_mark: int | None = None
    # The inbound app dials leave from the client's IP (IP_TRANSPARENT + IP_FREEBIND, bound to it),
    # as ztunnel's freebind_connect with original source on (waypoint/original_source.py). Needs
    # CAP_NET_ADMIN, and under istio-cni the packet mark (the connmark route brings replies back).
    original_source: bool = False
    # AuthorizationPolicies here without a selector apply to every pod of the mesh (Istio's
    # ``rootNamespace`` mesh config, default istio-system; facts §3.2)
    root_namespace: str = "istio-system"

    @property
    def default_identity(self) -> Identity:
        return self.dev_identity or Identity(self.trust_domain, "default", "default")


@dataclass
class _Contexts:
    """One TLS context per identity, updated in place when the provider re-mints."""

    provider: CertificateProvider
    server: bool
    entries: dict[Identity, tuple[WorkloadCertificate, ssl.SSLContext]] = field(default_factory=dict)

    def get(self, identity: Identity) -> ssl.SSLContext:
        cert = self.provider.certificate_for(identity)
        entry = self.entries.get(identity)
        if entry is None:
            ctx = tls.server_context(cert) if self.server else tls.client_context(cert)
            self.entries[identity] = (cert, ctx)
            return ctx
        if entry[0] is not cert:
            tls.update_context(entry[1], cert)
            self.entries[identity] = (cert, entry[1])
        return entry[1]

    def refresh(self) -> None:
        for identity in list(self.entries):
            self.get(identity)


class ZtunnelRole:
    def __init__(
        self,
        settings: ZtunnelSettings,
        snapshot: MeshSnapshot,
        certificates: CertificateProvider,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.state = self._state(snapshot)
        # AuthorizationPolicy, compiled once per snapshot; checked on every inbound connection
        # before the app is dialled (ZT:src/proxy/inbound.rs serve_connect, assert_rbac)
        self.authz = self._authorizer(snapshot)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = TcpMetrics(self.registry)
        self.conns = ConnectionTracker(self.metrics, settings.metrics_flush_s)
        self.picker = RoundRobinPicker()
        self._server_ctx = _Contexts(certificates, server=True)
        self._client_ctx = _Contexts(certificates, server=False)
        self.pool = HbonePool(
            self._client_ctx.get, tls.verify_server,
            connect_timeout_s=settings.connect_timeout_s, bind_source_ip=settings.bind_client_ip,
            keepalive_s=settings.keepalive_s, ping_timeout_s=settings.ping_timeout_s,
            packet_mark=settings.packet_mark,
        )
        self.inbound = Inbound(self)
        self.outbound = Outbound(self)
        self.hbone = HboneServer(
            self._server_context_for_ip,
            lambda ssl_object: tls.verify_client(ssl_object, settings.trust_domain),
            self.inbound.on_tunnel, self._hbone_refused,
            keepalive_s=settings.keepalive_s, ping_timeout_s=settings.ping_timeout_s,
        )
        self.local_pods: dict[str, Workload] = {}
        self.listeners = PodListeners(self.hbone.listen, settings.hbone_port,
                                      settings.bind_retry_s, settings.bind_retry_max_s)
        self.addresses: dict[str, Address] = {}  # listener name -> bound address
        self._servers: list[asyncio.Server] = []
        self._endpoints: list[HttpEndpoint] = []
        self._own: set[Address] = set()
        self._cert_timer: asyncio.TimerHandle | None = None
        self._started = False
        self.refusals: dict[str, int] = {}
        # more sections for /config_dump from whoever runs this role beside others (``waypoint dev``)
        self.dump_extensions: dict[str, Callable[[], object]] = {}

    def _state(self, snapshot: MeshSnapshot) -> MeshState:
        s = self.settings
        return MeshState(snapshot, s.trust_domain, s.cluster_domain, s.cluster_id)

    def _authorizer(self, snapshot: MeshSnapshot) -> ZtunnelAuthorizer:
        return ZtunnelAuthorizer.from_snapshot(snapshot, root_namespace=self.settings.root_namespace)

    # -- readiness -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Started, and every local pod has its HBONE listener (what ``/healthz/ready`` says)."""
        return self._started and not self.listeners.failed

    def pending(self) -> list[str]:
        """What keeps readiness at 503, by name (empty: ready)."""
        return ([] if self._started else ["start"]) + self.listeners.pending()

    @property
    def hbone_listeners(self) -> dict[str, asyncio.Server]:
        return self.listeners.listeners

    @property
    def failed_binds(self) -> dict[str, FailedBind]:
        return self.listeners.failed

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        mark.check_mark(s.packet_mark)  # asked for and refused: fail now, not on every connection
        check_original_source(s.original_source)  # likewise
        self.conns.start()
        await self._sync_pods()
        if s.outbound is not None:
            await self._serve("outbound", self.outbound.captured_factory, s.outbound)
        if s.socks5 is not None:
            await self._serve("socks5", lambda: Socks5Protocol(self.outbound.on_socks5, self._socks5_failed),
                              s.socks5)
        if s.inbound_plaintext is not None:
            await self._serve("inbound_plaintext", self.inbound.plaintext_factory, s.inbound_plaintext)
        for name, addr, routes in (
            ("readiness", s.readiness, readiness_routes(self.pending)),
            ("metrics", s.metrics, metrics_routes(self.registry)),
            ("admin", s.admin, config_dump_routes(self.config_dump)),
        ):
            if addr is not None:
                endpoint = HttpEndpoint(routes, name)
                self._endpoints.append(endpoint)
                server = await endpoint.listen(*addr)
                self.addresses[name] = server.sockets[0].getsockname()[:2]
        self._cert_timer = loop.call_later(60.0, self._refresh_certificates)
        self._started = True
        log.info("ztunnel started: %s; HBONE on %d local pods%s", self.addresses, len(self.hbone_listeners),
                 "" if self.ready else f"; not ready, pending: {', '.join(self.pending())}")

    async def _serve(self, name: str, factory: Callable[[], asyncio.BaseProtocol], addr: Address) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.packet_mark is None:
            server = await loop.create_server(factory, *addr)
        else:  # marked like ztunnel's in-pod listeners (ZT:src/inpod/config.rs tcp_bind)
            server = await loop.create_server(factory, sock=mark.listening_socket(*addr, self.settings.packet_mark))
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[:2]
        self.addresses[name] = bound
        self._own.add(bound)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful: stop accepting, GOAWAY, drain live connections until ``grace_s``, then reset."""
        self._started = False
        if self._cert_timer is not None:
            self._cert_timer.cancel()
        await self.listeners.stop()
        for server in self._servers:
            server.close()
        await asyncio.gather(self.hbone.close(grace_s), self.conns.drain(grace_s))
        await self.pool.close()
        for server in self._servers:
            await server.wait_closed()
        for endpoint in self._endpoints:
            await endpoint.close()
        self._servers.clear()
        self._endpoints.clear()

    async def apply(self, snapshot: MeshSnapshot) -> None:
        """A new config snapshot: new plans and policies from now on; listeners follow the local pods.

        Live inbound connections are checked again against the new policies and the ones no longer
        allowed are closed, as ztunnel's ``PolicyWatcher`` does on every policy change
        (``ZT:src/proxy/connection_manager.rs``; ``AuthorizationPolicyLateRejection``). ztunnel
        does it when policies change; we do it on every snapshot, which also covers a pod whose new
        labels bring it under a policy (a few µs per live connection, once per config change)."""
        self.state = self._state(snapshot)
        self.authz = self._authorizer(snapshot)
        await self._sync_pods()
        self.inbound.recheck()

    # -- local pods ------------------------------------------------------------------------------
    def _local_pods(self) -> dict[str, Workload]:
        pods: dict[str, Workload] = {}
        node = self.settings.node
        for w in self.state.snapshot.workloads:
            if w.deleting or w.gateway_name or not self.state.is_ambient(w):
                continue
            if node is not None and w.node != node:
                continue
            for ip in w.ips:
                pods.setdefault(ip, w)
        return pods

    async def _sync_pods(self) -> None:
        """Listeners follow the local pods; every missing one is tried now (a new config retries at once)."""
        self.local_pods = self._local_pods()
        await self.listeners.sync(self.local_pods)

    def is_own_listener(self, addr: tuple[str, int]) -> bool:
        """Is ``addr`` one of our capture/SOCKS5 listeners (a wildcard one included)?

        A connection there that was not redirected has no other destination, and a plan that
        dials one of them would loop. HBONE listeners are not in the set: same-node traffic
        does reach a local pod through our own ``<pod IP>:15008``.
        """
        host, port = addr
        return any(p == port and h in (host, "0.0.0.0", "::", "") for h, p in self._own)

    # -- identities ------------------------------------------------------------------------------
    def source_of(self, ip: str) -> tuple[Workload | None, Identity | None]:
        """The source workload and the identity it speaks as (None: refuse)."""
        pod = self.local_pods.get(ip)
        if pod is not None:
            return pod, self.state.identity_of(pod)
        if self.settings.dev:
            return None, self.settings.default_identity
        return None, None

    def _server_context_for_ip(self, ip: str) -> ssl.SSLContext:
        pod = self.local_pods.get(ip)
        if pod is None:
            raise LookupError(f"no local pod at {ip}")
        return self._server_ctx.get(self.state.identity_of(pod))

    def refresh_certificates(self) -> None:
        """Ask the provider again (re-minted at half-life, or new files on disk): contexts update in
        place, so new handshakes use the new certificate and live connections keep theirs (facts §1.1)."""
        for contexts in (self._server_ctx, self._client_ctx):
            try:
                contexts.refresh()
            except Exception:
                log.exception("certificate refresh failed")

    def _refresh_certificates(self) -> None:
        self.refresh_certificates()
        self._cert_timer = asyncio.get_running_loop().call_later(60.0, self._refresh_certificates)

    # -- refusals --------------------------------------------------------------------------------
    def refused(self, where: str, reason: str, detail: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.metrics.refused("ztunnel", reason)
        log.info("%s refused: %s (%s)", where, reason, detail)

    def _hbone_refused(self, reason: str, detail: str, peer: Address) -> None:
        # the HBONE server already logged it with the peer
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.metrics.refused("ztunnel", reason)

    def _socks5_failed(self, reason: str, peer: Address | None) -> None:
        self.refusals["socks5_handshake"] = self.refusals.get("socks5_handshake", 0) + 1
        self.metrics.refused("ztunnel", "socks5_handshake")

    # -- admin -----------------------------------------------------------------------------------
    def config_dump(self) -> dict[str, object]:
        snap = self.state.snapshot
        return {
            "generation": snap.generation,
            "node": self.settings.node,
            "dev": self.settings.dev,
            "packet_mark": self.settings.packet_mark,
            "original_source": self.settings.original_source,
            "listeners": {k: f"{v[0]}:{v[1]}" for k, v in self.addresses.items()},
            "local_pods": {
                ip: {"pod": f"{w.namespace}/{w.name}", "identity": str(self.state.identity_of(w)),
                     "hbone": ip in self.hbone_listeners,
                     **({"hbone_error": self.failed_binds[ip].error} if ip in self.failed_binds else {}),
                     **({"policies": names} if (names := self.authz.policy_names(w)) else {})}
                for ip, w in sorted(self.local_pods.items())
            },
            "services": sorted(f"{s.namespace}/{s.name}" for s in snap.services),
            "waypoints": sorted(f"{w.namespace}/{w.name}" for w in snap.waypoints),
            "problems": [p.describe() for p in snap.problems],
            "connections": {"live": len(self.conns.live), "completed": self.conns.completed,
                            "pool_connections": self.pool.live_connections},
            "refusals": dict(self.refusals),
            **{name: dump() for name, dump in self.dump_extensions.items()},
        }
