"""Builders for Kubernetes object dicts, shared by the mesh and plan tests."""

from __future__ import annotations

from typing import Any


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


def pod(
    name: str,
    ip: str,
    ns: str = "default",
    labels: dict[str, str] | None = None,
    sa: str = "default",
    ready: bool = True,
    phase: str = "Running",
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": {
            "serviceAccountName": sa,
            "nodeName": "dev-node",
            "containers": [{"name": "app", "ports": ports or []}],
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(
    name: str,
    vip: str | None,
    ns: str = "default",
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}]
    }
    if vip is not None:
        spec["clusterIP"] = vip
    if selector is not None:
        spec["selector"] = selector
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": spec,
    }


def waypoint_gateway(
    name: str = "waypoint",
    ns: str = "default",
    address: str | None = None,
    waypoint_for: str | None = None,
    annotations: dict[str, str] | None = None,
    allowed_from: str | None = None,
) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed_from:
        listener["allowedRoutes"] = {"namespaces": {"from": allowed_from}}
    gw: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": {}, "annotations": dict(annotations or {})},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [listener]},
    }
    if waypoint_for is not None:
        gw["metadata"]["labels"]["istio.io/waypoint-for"] = waypoint_for
    if address is not None:
        gw["spec"]["addresses"] = [{"type": "IPAddress", "value": address}]
    return gw
