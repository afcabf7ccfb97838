"""The Kubernetes resources the mesh reads from the API server: one table, easy to extend.

Each row says where a kind lives in the API (``/api/v1/pods``, ``/apis/<group>/<version>/<plural>``)
so the watcher can list and watch it cluster-wide, and names what a rejected object is reported as
(``kubernetes:pods/default/echo-1``, the API's own ``<resource>/<namespace>/<name>`` spelling).
A source watches only the rows whose kind its :class:`~waypoint.mesh.kube.KindRegistry` knows, so
registering a kind (ConfigMap, say) is all it takes to start reading it. ``deploy/waypoint-rbac.yaml``
grants get/list/watch on exactly these rows (a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from waypoint.mesh.kube import KindRegistry

GATEWAY_API = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource: its kind, its plural (the URL word), its group and version."""

    kind: str
    plural: str
    group: str = ""  # "" is the core group (/api/v1)
    version: str = "v1"
    cluster_scoped: bool = False
    field_selector: str = ""  # narrows the list and watch (API concepts, "Field selectors")

    @property
    def api_version(self) -> str:
        """``apiVersion`` as objects carry it; list items come without it and get it from here."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection URL (Kubernetes API concepts, "Resource URIs")."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"

    @property
    def display(self) -> str:
        """``pods``, ``gateways.gateway.networking.k8s.io``: how kubectl names the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def object_source(self, namespace: str, name: str) -> str:
        """Where an object came from, in reports: ``kubernetes:pods/default/echo-1``."""
        where = f"{namespace}/{name}" if namespace else name
        return f"kubernetes:{self.plural}/{where}"


RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "namespaces", cluster_scoped=True),
    Resource("Pod", "pods"),
    Resource("Service", "services"),
    # only Istio's mesh config (``istio``, key ``mesh``: waypoint/policy/meshconfig.py), not every ConfigMap
    Resource("ConfigMap", "configmaps", field_selector="metadata.name=istio"),
    Resource("EndpointSlice", "endpointslices", "discovery.k8s.io"),
    Resource("Gateway", "gateways", GATEWAY_API),
    Resource("HTTPRoute", "httproutes", GATEWAY_API),
    Resource("GRPCRoute", "grpcroutes", GATEWAY_API),
    Resource("ReferenceGrant", "referencegrants", GATEWAY_API, "v1beta1"),
    Resource("AuthorizationPolicy", "authorizationpolicies", "security.istio.io"),
    Resource("RequestAuthentication", "requestauthentications", "security.istio.io"),
    Resource("PeerAuthentication", "peerauthentications", "security.istio.io"),
    Resource("Telemetry", "telemetries", "telemetry.istio.io"),
)


def resources_for(registry: KindRegistry, table: Iterable[Resource] = RESOURCES) -> tuple[Resource, ...]:
    """The rows a source with ``registry`` should watch: kinds nobody uses are not even listed."""
    return tuple(r for r in table if registry.knows(r.kind))
