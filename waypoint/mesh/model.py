"""The mesh as the data plane sees it: immutable values built from Kubernetes objects.

Every source (the config folder today, a Kubernetes API watcher later) produces the same
:class:`MeshSnapshot`; consumers hold one snapshot and never see it change under them. The
values say what the objects say; what follows from several objects together (is a pod enrolled in
ambient, which waypoint serves it, its ready endpoints) is derived in :mod:`waypoint.mesh.state`.

The fields mirror what ztunnel receives over WDS (facts §2.1: ``Workload``, ``Service``,
``GatewayAddress``) so the L4 plan reads like ztunnel's ``build_request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Labels and annotations read from objects (IS:pkg/config/constants/constants.go, facts §2.2).
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_SA_ANNOTATION = (
    "gateway.istio.io/service-account"  # IS:pilot/pkg/config/kube/gateway (gatewaySAOverride)
)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # EndpointSlice -> Service
WAYPOINT_CLASS = "istio-waypoint"
HBONE_PORT = 15008

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class KubeObject:
    """Any accepted object, kept whole for consumers that interpret its kind (routes, policies).

    ``body`` is the object as loaded; treat it as read-only (it is shared by every snapshot that
    still holds this version of the object).
    """

    kind: str
    namespace: str  # "" for cluster-scoped kinds (Namespace, GatewayClass)
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    creation_timestamp: str | None  # as written (RFC 3339), None when absent
    body: Mapping[str, Any]
    source: str  # file the object came from ("" when not from a file)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class WaypointRef:
    """``istio.io/use-waypoint`` (+ ``-namespace``) as written on a Namespace, Service or Pod.

    ``opt_out`` is the reserved value ``none`` ("#none" accepted too): the object explicitly
    uses no waypoint, overriding its namespace (IS:.../ambient/waypoints.go ``getUseWaypoint``).
    """

    name: str
    namespace: str
    opt_out: bool = False


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    use_waypoint: WaypointRef | None = None


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A pod container port; a Service's named ``targetPort`` resolves against these names."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Workload:
    """A Pod (or a waypoint that has an address but no Pod objects, see ``MeshState``).

    ``uid`` follows istiod's workload UID shape ``<cluster>//v1/Pod/<ns>/<name>``.
    Enrolment in ambient is not decided here: it depends on the namespace too
    (``MeshState.is_ambient``); ``dataplane_mode`` is the pod's own label.
    """

    uid: str
    name: str
    namespace: str
    ips: tuple[str, ...]
    service_account: str
    node: str
    labels: Mapping[str, str]
    phase: str  # Running, Pending, Succeeded, Failed, Unknown
    ready: bool  # condition Ready=True
    dataplane_mode: str | None  # label istio.io/dataplane-mode on the pod, if any
    use_waypoint: WaypointRef | None  # label istio.io/use-waypoint on the pod, if any
    ports: tuple[ContainerPort, ...] = ()
    gateway_name: str | None = None  # label gateway.networking.k8s.io/gateway-name: a waypoint instance
    deleting: bool = False  # metadata.deletionTimestamp set

    @property
    def serving(self) -> bool:
        """Ready to take traffic: running, Ready, has an address, not being deleted."""
        return self.phase == "Running" and self.ready and bool(self.ips) and not self.deleting


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: str = "TCP"  # TCP, UDP, SCTP (Kubernetes' transport field)
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str  # <name>.<ns>.svc.<cluster domain>
    vips: tuple[str, ...]  # clusterIPs; empty for headless
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None  # None: no selector (endpoints come from EndpointSlices)
    labels: Mapping[str, str]
    use_waypoint: WaypointRef | None

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready backend of one service port, with the target port already resolved."""

    workload: Workload
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    pod_name: str | None  # targetRef of kind Pod


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """discovery.k8s.io/v1 EndpointSlice: used instead of the selector when a service has any."""

    name: str
    namespace: str
    service_name: str
    ports: tuple[tuple[str, int], ...]  # (port name, port number)
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(frozen=True, slots=True)
class AllowedNamespaces:
    """The HBONE listener's ``allowedRoutes.namespaces``: who may use this waypoint.

    IS:.../ambient/waypoints.go ``makeAllowedRoutes``: default ``Same``.
    """

    source: str = "Same"  # Same | All | Selector
    match_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, operator, values)


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A Gateway of class ``istio-waypoint`` with an HBONE listener on 15008 (facts §2.2)."""

    name: str
    namespace: str
    addresses: tuple[str, ...]  # spec.addresses then status.addresses (IP values)
    waypoint_for: str  # service (default) | workload | all | none
    service_account: str  # configured identity SA: annotation, else the gateway name
    allowed: AllowedNamespaces = field(default_factory=AllowedNamespaces)

    @property
    def serves_services(self) -> bool:
        return self.waypoint_for in ("service", "all")

    @property
    def serves_workloads(self) -> bool:
        return self.waypoint_for in ("workload", "all")


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One rejected object (or unreadable file), as the admin config dump shows it."""

    file: str
    kind: str
    namespace: str
    name: str
    field: str  # dotted path inside the object; for a syntax error "line N"
    message: str

    def describe(self) -> str:
        if not self.kind and not self.name:
            where = f"{self.file}:{self.field[5:]}" if self.field.startswith("line ") else self.file
            return f"rejected {where}: {self.message}"
        obj = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"rejected {self.file}: {self.kind} {obj}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """Everything one source knows at one moment. Immutable; replaced whole on change."""

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    waypoints: tuple[Waypoint, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    raw: Mapping[str, tuple[KubeObject, ...]] = field(default_factory=dict)
    problems: tuple[ManifestProblem, ...] = ()
    generation: int = 0  # increases with each snapshot a source builds

    def objects(self, kind: str) -> list[KubeObject]:
        """Every accepted object of ``kind`` (any kind the registry knows), in source order."""
        return list(self.raw.get(kind, ()))
