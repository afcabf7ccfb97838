"""The dev mesh: one ztunnel for every pod of a folder, a waypoint for every waypoint Gateway,
and a dev CA that mints each workload's certificate on demand, as the real ztunnel asks its CA.

Everything runs in one process on 127/8: each pod's apps listen on the pod's own address (the
user's processes, or the shipped example's), and every pod gets its own ``<pod IP>:15008``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from waypoint.devmesh.addresses import assign_waypoint_addresses
from waypoint.identity.ca import DevCA
from waypoint.identity.certs import DevCertificateProvider
from waypoint.l7.filter import Filter
from waypoint.l7.filters.access_log import LogSinks
from waypoint.l7.filters.istio_stats import IstioRequestMetrics
from waypoint.mesh.folder import FolderSource
from waypoint.mesh.model import MeshSnapshot
from waypoint.mesh.state import MeshState
from waypoint.roles.runtime import folder_source
from waypoint.roles.waypoint import WaypointRole, WaypointSettings
from waypoint.roles.ztunnel import ZtunnelRole, ZtunnelSettings

log = logging.getLogger(__name__)

EXAMPLE_DIR = Path(__file__).parent / "example"

Address = tuple[str, int]


@dataclass(frozen=True)
class DevSettings:
    """Where the dev mesh listens; the defaults are the public localhost interface."""

    config: Path = EXAMPLE_DIR
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"  # AuthorizationPolicy's mesh-wide namespace (facts §3.2)
    ca_dir: Path | None = None  # keep the dev CA here (created if missing); None: a fresh one in memory
    socks5: Address | None = ("127.0.0.1", 15080)
    outbound: Address | None = ("127.0.0.1", 15001)
    inbound_plaintext: Address | None = ("127.0.0.1", 15006)
    readiness: Address | None = ("127.0.0.1", 15021)
    metrics: Address | None = ("127.0.0.1", 15020)
    admin: Address | None = ("127.0.0.1", 15000)
    keepalive_s: float = 10.0
    ping_timeout_s: float = 20.0
    # Serve only this node's pods (None: every pod). Pods of other nodes are reached at their own
    # <pod IP>:15008, where something else (another ztunnel, an Envoy) terminates HBONE.
    node: str | None = None
    # Waypoints' access log when neither the folder's mesh config (accessLogFile) nor a Telemetry
    # object says otherwise: on, to stdout, so a developer sees each request and why it was denied.
    access_log: str | None = "/dev/stdout"


@dataclass
class DevMesh:
    settings: DevSettings
    # Run in every waypoint after the built-in filters (an embedding's or a test's own filters).
    waypoint_filters: Sequence[Filter] = ()
    source: FolderSource = field(init=False)
    ztunnel: ZtunnelRole = field(init=False)
    waypoints: dict[tuple[str, str], WaypointRole] = field(default_factory=dict)
    ca: DevCA = field(init=False)

    def __post_init__(self) -> None:
        self.source = folder_source(str(self.settings.config))
        self.ca = self._dev_ca()
        self.certificates = DevCertificateProvider(self.ca)
        # one /metrics on the ztunnel's port for the whole dev mesh: its TCP series and every
        # waypoint's istio_requests_total (reporter="waypoint"), one counter shared by all of them
        self.registry = CollectorRegistry()
        self.request_metrics = IstioRequestMetrics(self.registry)
        self.log_sinks = LogSinks()  # one writer per access-log file for every waypoint

    def _dev_ca(self) -> DevCA:
        ca_dir = self.settings.ca_dir
        if ca_dir is not None and DevCA.exists(ca_dir):
            return DevCA.load(ca_dir)
        ca = DevCA.create(self.settings.trust_domain)
        if ca_dir is not None:
            ca.save(ca_dir)
        return ca

    def _ztunnel_settings(self) -> ZtunnelSettings:
        s = self.settings
        return ZtunnelSettings(
            node=s.node, trust_domain=s.trust_domain, dev=True, outbound=s.outbound, socks5=s.socks5,
            inbound_plaintext=s.inbound_plaintext, readiness=s.readiness, metrics=s.metrics, admin=s.admin,
            keepalive_s=s.keepalive_s, ping_timeout_s=s.ping_timeout_s, root_namespace=s.root_namespace,
        )

    def _snapshot(self, snapshot: MeshSnapshot) -> MeshSnapshot:
        return assign_waypoint_addresses(snapshot)

    async def start(self) -> None:
        snapshot = self._snapshot(self.source.reload())
        await self._sync_waypoints(snapshot)  # before the ztunnel: readiness means everything is up
        self.ztunnel = ZtunnelRole(self._ztunnel_settings(), snapshot, self.certificates, registry=self.registry)
        self.ztunnel.dump_extensions["waypoint_roles"] = lambda: [w.config_dump() for w in self.waypoints.values()]
        await self.ztunnel.start()

    async def apply(self, snapshot: MeshSnapshot) -> None:
        """A changed folder: the ztunnel's pods and every waypoint follow the new snapshot."""
        snapshot = self._snapshot(snapshot)
        await self._sync_waypoints(snapshot)
        await self.ztunnel.apply(snapshot)

    async def _sync_waypoints(self, snapshot: MeshSnapshot) -> None:
        state = MeshState(snapshot, self.settings.trust_domain)
        wanted = {(wp.namespace, wp.name): wp for wp in snapshot.waypoints}
        for key in [k for k in self.waypoints if k not in wanted]:
            await self.waypoints.pop(key).stop(1.0)
        for key, wp in wanted.items():
            role = self.waypoints.get(key)
            address = state.waypoint_addresses(wp)[0]
            if role is not None and role.settings.address == address:
                role.update(state)
                continue
            if role is not None:
                await self.waypoints.pop(key).stop(1.0)
            role = WaypointRole(
                WaypointSettings(wp.namespace, wp.name, address, trust_domain=self.settings.trust_domain,
                                 keepalive_s=self.settings.keepalive_s, ping_timeout_s=self.settings.ping_timeout_s,
                                 root_namespace=self.settings.root_namespace,
                                 default_access_log=self.settings.access_log),
                state, self.certificates, extra_filters=self.waypoint_filters, telemetry=(self.request_metrics,),
                log_sinks=self.log_sinks,
            )
            await role.start()
            self.waypoints[key] = role

    async def watch(self) -> None:
        await self.source.watch(self.apply)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.ztunnel.stop(grace_s)
        for role in self.waypoints.values():
            await role.stop(grace_s)
        self.waypoints.clear()
        self.log_sinks.close()

    def summary(self) -> dict[str, int]:
        snap = self.source.snapshot
        return {
            "pods": len(self.ztunnel.local_pods),
            "services": len(snap.services),
            "waypoints": len(self.waypoints),
            "rejected": len(snap.problems),
        }


async def run_until(mesh: DevMesh, stop: asyncio.Event) -> None:
    watcher = asyncio.get_running_loop().create_task(mesh.watch())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
