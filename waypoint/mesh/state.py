"""Pure lookups over one snapshot: what ztunnel's ``ProxyState`` answers, for our model.

Built once per snapshot (indexes by IP, VIP, name), then read on every connection; nothing
here does I/O or changes after construction except memoised answers (endpoints of a service
port, services of a workload), which are functions of the immutable snapshot.

Steering rules (facts §2.2; ``IS:pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go``):
``istio.io/use-waypoint`` on the object wins over its namespace's; ``none`` opts out; a waypoint
serves service-addressed traffic if ``istio.io/waypoint-for`` is ``service``/``all`` and
workload-addressed traffic if ``workload``/``all``; a reference from another namespace needs the
waypoint's HBONE listener to allow it (``allowedRoutes.namespaces``, default ``Same``).
"""

from __future__ import annotations

from collections.abc import Mapping

from waypoint.identity.spiffe import Identity
from waypoint.mesh.model import (
    DATAPLANE_MODE_LABEL,
    EMPTY_LABELS,
    Endpoint,
    EndpointSlice,
    MeshSnapshot,
    Namespace,
    Service,
    ServicePort,
    Waypoint,
    WaypointRef,
    Workload,
)

# Port protocols as Istio names them (IS:pkg/config/protocol/instance.go ``Parse``).
_PROTOCOLS = {
    "tcp": "TCP",
    "udp": "UDP",
    "grpc": "GRPC",
    "grpc-web": "GRPC-Web",
    "http": "HTTP",
    "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2",
    "https": "HTTPS",
    "tls": "TLS",
    "mongo": "Mongo",
    "redis": "Redis",
    "mysql": "MySQL",
}
# Kubernetes' standard appProtocol names (IS:pkg/config/kube/conversion.go ``ConvertProtocol``).
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP", "kubernetes.io/wss": "HTTPS"}
_WELL_KNOWN_TCP_PORTS = (25, 53, 3306, 27017)  # SMTP, DNS, MySQL, MongoDB: never sniffed
UNKNOWN_PROTOCOL = ""  # nothing declared: sniff


def port_protocol(port: ServicePort) -> str:
    """Istio's protocol for a service port: appProtocol, else the port name's prefix, else unknown.

    Follows ``ConvertProtocol``: UDP transport wins; the name ``grpc-web...`` is checked before
    cutting at the first ``-``; well-known TCP ports default to TCP. Returns "" when unknown.
    """
    if port.protocol == "UDP":
        return "UDP"
    name = port.app_protocol if port.app_protocol is not None else port.name
    if port.app_protocol is not None and name in _K8S_APP_PROTOCOLS:
        return _K8S_APP_PROTOCOLS[name]
    lowered = name.lower()
    if lowered.startswith("grpc-web"):
        return "GRPC-Web"
    found = _PROTOCOLS.get(lowered.split("-", 1)[0])
    if found is None and port.port in _WELL_KNOWN_TCP_PORTS:
        return "TCP"
    return found or UNKNOWN_PROTOCOL


class MeshState:
    """Read-only view of one :class:`MeshSnapshot` with the lookups the data plane needs."""

    def __init__(
        self,
        snapshot: MeshSnapshot,
        trust_domain: str = "cluster.local",
        cluster_domain: str = "cluster.local",
        cluster_id: str = "Kubernetes",
    ) -> None:
        self.snapshot = snapshot
        self.trust_domain = trust_domain
        self.cluster_domain = cluster_domain
        self._cluster_id = cluster_id
        self._namespaces: Mapping[str, Namespace] = snapshot.namespaces
        self._services = {(s.namespace, s.name): s for s in snapshot.services}
        self._by_vip = {vip: s for s in snapshot.services for vip in s.vips}
        self._waypoints = {(w.namespace, w.name): w for w in snapshot.waypoints}
        self._pods = {(w.namespace, w.name): w for w in snapshot.workloads}
        self._by_ns: dict[str, list[Workload]] = {}
        self._waypoint_pods: dict[tuple[str, str], list[Workload]] = {}
        for w in snapshot.workloads:
            self._by_ns.setdefault(w.namespace, []).append(w)
            if w.gateway_name:
                self._waypoint_pods.setdefault((w.namespace, w.gateway_name), []).append(w)
        self._slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in snapshot.endpoint_slices:
            if s.service_name:
                self._slices.setdefault((s.namespace, s.service_name), []).append(s)
        self._by_ip: dict[str, Workload] = {}
        for w in sorted(snapshot.workloads, key=lambda w: not w.serving):  # serving pods win an IP
            for ip in w.ips:
                self._by_ip.setdefault(ip, w)
        self._standins: dict[tuple[str, str], tuple[Workload, ...]] = {}
        for wp in snapshot.waypoints:
            if not self._waypoint_pods.get((wp.namespace, wp.name)) and wp.addresses:
                standin = self._waypoint_standin(wp)
                self._standins[(wp.namespace, wp.name)] = (standin,)
                for ip in standin.ips:
                    self._by_ip.setdefault(ip, standin)
        self._endpoints: dict[tuple[str, str, int], tuple[Endpoint, ...]] = {}
        self._services_of: dict[str, tuple[Service, ...]] = {}

    # -- lookups by address and name ------------------------------------------------------------

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def service_by_vip(self, ip: str) -> Service | None:
        return self._by_vip.get(ip)

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get((namespace, name))

    def namespace(self, name: str) -> Namespace | None:
        return self._namespaces.get(name)

    def waypoint(self, namespace: str, name: str) -> Waypoint | None:
        return self._waypoints.get((namespace, name))

    def service_by_name(self, host: str, client_namespace: str = "default") -> Service | None:
        """``name``, ``name.ns``, ``name.ns.svc`` or the FQDN, as a pod's resolv.conf search would."""
        parts = host.rstrip(".").lower().split(".")
        suffix = ["svc", *self.cluster_domain.split(".")]
        if len(parts) == 1:
            return self._services.get((client_namespace, parts[0]))
        if len(parts) == 2 or parts[2:] in (["svc"], suffix):
            return self._services.get((parts[1], parts[0]))
        return None

    # -- identity and enrolment -------------------------------------------------------------------

    def identity_of(self, workload: Workload) -> Identity:
        return Identity(self.trust_domain, workload.namespace, workload.service_account)

    def is_ambient(self, workload: Workload) -> bool:
        """Enrolled: pod label ``istio.io/dataplane-mode`` (``none`` opts out), else its namespace's."""
        mode = workload.dataplane_mode
        if mode is not None and mode != "":
            return mode == "ambient"
        ns = self._namespaces.get(workload.namespace)
        return ns is not None and ns.labels.get(DATAPLANE_MODE_LABEL) == "ambient"

    # -- waypoints ----------------------------------------------------------------------------------

    def waypoint_for_service(self, service: Service) -> Waypoint | None:
        wp = self._use_waypoint(service.use_waypoint, service.namespace)
        return wp if wp is not None and wp.serves_services else None

    def waypoint_for_workload(self, workload: Workload) -> Waypoint | None:
        if workload.gateway_name and (workload.namespace, workload.gateway_name) in self._waypoints:
            return None  # a waypoint's own pods never go through a waypoint
        wp = self._use_waypoint(workload.use_waypoint, workload.namespace)
        return wp if wp is not None and wp.serves_workloads else None

    def waypoint_workloads(self, waypoint: Waypoint) -> tuple[Workload, ...]:
        """Pods of the waypoint (label gateway-name), or a stand-in at its addresses if it has none."""
        pods = self._waypoint_pods.get((waypoint.namespace, waypoint.name))
        if pods:
            return tuple(pods)
        return self._standins.get((waypoint.namespace, waypoint.name), ())

    def waypoint_addresses(self, waypoint: Waypoint) -> tuple[str, ...]:
        """Where to send HBONE for this waypoint: its Gateway addresses, else its serving pods' IPs."""
        if waypoint.addresses:
            return waypoint.addresses
        return tuple(w.ips[0] for w in self.waypoint_workloads(waypoint) if w.serving)

    def waypoint_identities(self, waypoint: Waypoint) -> tuple[Identity, ...]:
        """SANs a waypoint may present: its pods' service accounts, else the configured one."""
        accounts = sorted(
            {w.service_account for w in self._waypoint_pods.get((waypoint.namespace, waypoint.name), ())}
        )
        return tuple(
            Identity(self.trust_domain, waypoint.namespace, sa)
            for sa in accounts or [waypoint.service_account]
        )

    def is_from_waypoint(self, source: Workload | None, waypoint: Waypoint) -> bool:
        """ztunnel ``check_from_waypoint`` (ZT:src/proxy.rs L741-751): same identity AND same IP."""
        if source is None:
            return False
        if self.identity_of(source) not in self.waypoint_identities(waypoint):
            return False
        ips = set(waypoint.addresses)
        for w in self.waypoint_workloads(waypoint):
            ips.update(w.ips)
        return any(ip in ips for ip in source.ips)

    def _use_waypoint(self, ref: WaypointRef | None, namespace: str) -> Waypoint | None:
        if ref is None:
            ns = self._namespaces.get(namespace)
            ref = ns.use_waypoint if ns is not None else None
            if ref is None:
                return None
        if ref.opt_out:
            return None
        wp = self._waypoints.get((ref.namespace, ref.name))
        if wp is None or not self._allows(wp, namespace):
            return None
        return wp

    def _allows(self, wp: Waypoint, namespace: str) -> bool:
        """IS:.../waypoints.go ``AllowsAttachmentFromNamespace``."""
        source = wp.allowed.source
        if source == "All":
            return True
        if source == "Selector":
            ns = self._namespaces.get(namespace)
            return ns is not None and _selector_matches(
                wp.allowed.match_labels, wp.allowed.match_expressions, ns.labels
            )
        return wp.namespace == namespace

    def _waypoint_standin(self, wp: Waypoint) -> Workload:
        return Workload(
            uid=f"{self._cluster_id}//gateway.networking.k8s.io/Gateway/{wp.namespace}/{wp.name}",
            name=wp.name,
            namespace=wp.namespace,
            ips=wp.addresses,
            service_account=wp.service_account,
            node="",
            labels=EMPTY_LABELS,
            phase="Running",
            ready=True,
            dataplane_mode="none",  # the waypoint template labels its pods out of capture
            use_waypoint=None,
            gateway_name=wp.name,
        )

    # -- endpoints ----------------------------------------------------------------------------------

    def endpoints(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        """Ready endpoints of one service port, target port resolved; memoised per snapshot."""
        key = (service.namespace, service.name, port)
        found = self._endpoints.get(key)
        if found is None:
            found = self._compute_endpoints(service, port)
            self._endpoints[key] = found
        return found

    def _compute_endpoints(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        sp = service.port(port)
        if sp is None:
            return ()
        slices = self._slices.get((service.namespace, service.name))
        if slices:
            return self._slice_endpoints(service, sp, slices)
        if not service.selector:  # nil or empty selector: no endpoints controller, as in Kubernetes
            return ()
        out: list[Endpoint] = []
        for w in self._by_ns.get(service.namespace, ()):
            if w.serving and _labels_match(service.selector, w.labels):
                target = resolve_target_port(sp, w)
                if target is not None:
                    out.append(Endpoint(w, w.ips[0], target))
        return tuple(out)

    def _slice_endpoints(
        self, service: Service, sp: ServicePort, slices: list[EndpointSlice]
    ) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        for s in slices:
            target = next((p for name, p in s.ports if name == sp.name and p), None)
            if target is None:
                continue
            for e in s.endpoints:
                if not e.ready:
                    continue
                for ip in e.addresses:
                    pod = self._pods.get((s.namespace, e.pod_name)) if e.pod_name else None
                    w = pod or self._by_ip.get(ip) or self._external(service, ip)
                    out.append(Endpoint(w, ip, target))
        return tuple(out)

    def _external(self, service: Service, ip: str) -> Workload:
        """An EndpointSlice address that is no pod we know: reachable, but outside the mesh."""
        return Workload(
            uid=f"{self._cluster_id}//discovery.k8s.io/EndpointSlice/{service.namespace}/{service.name}/{ip}",
            name=ip,
            namespace=service.namespace,
            ips=(ip,),
            service_account="default",
            node="",
            labels=EMPTY_LABELS,
            phase="Running",
            ready=True,
            dataplane_mode="none",
            use_waypoint=None,
        )

    def services_of(self, workload: Workload) -> tuple[Service, ...]:
        """Services whose selector picks this workload (for metric labels, inbound service guess)."""
        found = self._services_of.get(workload.uid)
        if found is None:
            found = tuple(
                s
                for s in self.snapshot.services
                if s.namespace == workload.namespace
                and s.selector
                and _labels_match(s.selector, workload.labels)
            )
            self._services_of[workload.uid] = found
        return found


def resolve_target_port(port: ServicePort, workload: Workload) -> int | None:
    """A numeric targetPort as is; a named one via the pod's container ports (None if absent)."""
    if isinstance(port.target_port, int):
        return port.target_port
    for cp in workload.ports:
        if cp.name == port.target_port and cp.protocol == port.protocol:
            return cp.port
    return None


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _selector_matches(
    match_labels: Mapping[str, str],
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...],
    labels: Mapping[str, str],
) -> bool:
    if not _labels_match(match_labels, labels):
        return False
    for key, op, values in expressions:
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


__all__ = ["UNKNOWN_PROTOCOL", "MeshState", "port_protocol", "resolve_target_port"]
