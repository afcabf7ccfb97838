"""A small mesh for policy tests: the conformance data's fixed world (README §2).

Destination: Pod ``b-0`` (labels as given) behind Service ``b`` in ``ns1``, waypoint ``waypoint``
in ``ns1``. Sources: ``ns1/a`` 10.0.1.10, ``ns2/a`` 10.0.2.10, plaintext 10.0.9.9. Service ports
equal their target ports, so port rules mean the same at the waypoint and at the pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from waypoint.identity.spiffe import Identity
from waypoint.mesh.kube import KindRegistry
from waypoint.mesh.model import MeshSnapshot, Service, Waypoint, Workload
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.policy.attributes import ConnectionFacts, RequestFacts
from waypoint.policy.authz import validate_authorization_policy

POD_IP = "10.0.3.10"
SERVICE_VIP = "10.96.0.10"
PORTS = (18080, 18085, 17070, 19090, 8080)


def registry() -> KindRegistry:
    reg = KindRegistry()
    reg.register_kind("AuthorizationPolicy", validate_authorization_policy)
    return reg


def world_docs(labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    ports = [{"name": f"p{p}", "port": p, "targetPort": p} for p in PORTS]
    return [
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("istio-system", "ns1", "ns2")),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "b-0", "namespace": "ns1", "labels": dict(labels or {"app": "b"})},
            "spec": {"serviceAccountName": "b", "nodeName": "node", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": POD_IP, "conditions": [{"type": "Ready", "status": "True"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "b", "namespace": "ns1"},
            "spec": {"clusterIP": SERVICE_VIP, "selector": {"app": "b"}, "ports": ports},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "ns1"},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        },
    ]


def snapshot(policies: Iterable[str | Mapping[str, Any]], labels: Mapping[str, str] | None = None) -> MeshSnapshot:
    docs: list[Any] = world_docs(labels)
    docs.extend(yaml.safe_load(p) if isinstance(p, str) else p for p in policies)
    return snapshot_from_docs(docs, registry=registry())


def pod(snap: MeshSnapshot) -> Workload:
    return next(w for w in snap.workloads if w.name == "b-0")


def service(snap: MeshSnapshot) -> Service:
    return next(s for s in snap.services if s.name == "b")


def waypoint(snap: MeshSnapshot) -> Waypoint:
    return next(w for w in snap.waypoints if w.name == "waypoint")


def identity(principal: str | None) -> Identity | None:
    return Identity.parse(f"spiffe://{principal}") if principal else None


def conn(
    principal: str | None = "cluster.local/ns/ns1/sa/a",
    source_ip: str = "10.0.1.10",
    port: int = 18080,
    destination_ip: str = POD_IP,
) -> ConnectionFacts:
    return ConnectionFacts(source_ip, identity(principal), destination_ip, port)


def request(
    method: str = "GET",
    path: str = "/",
    host: str = "b.ns1.svc.cluster.local",
    headers: Iterable[tuple[str, str]] = (),
    **conn_args: Any,
) -> RequestFacts:
    conn_args.setdefault("destination_ip", SERVICE_VIP)
    return RequestFacts(conn(**conn_args), method, path, host, tuple(headers))


def policy(
    name: str, spec: Mapping[str, Any], ns: str = "ns1", annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "annotations": dict(annotations or {})},
        "spec": dict(spec),
    }
