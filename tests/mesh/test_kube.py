"""Parsing each kind, and each rejection naming its field (as `kubectl apply` would)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.mesh import objects as o
from waypoint.errors import ManifestError
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import default_registry
from waypoint.mesh.model import (
    ContainerPort,
    EndpointSlice,
    Namespace,
    Service,
    ServicePort,
    Waypoint,
    Workload,
)
from waypoint.mesh.snapshot import snapshot_from_docs

CTX = ParseContext()


def parse(doc: Any) -> Any:
    parsed = default_registry().parse(doc, CTX, "f.yaml")
    assert parsed is not None
    return parsed.model


def test_namespace_labels_and_use_waypoint() -> None:
    ns = parse(o.namespace("shop", **{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp"}))
    assert isinstance(ns, Namespace)
    assert ns.labels["istio.io/dataplane-mode"] == "ambient"
    assert ns.use_waypoint is not None and (ns.use_waypoint.namespace, ns.use_waypoint.name) == ("shop", "wp")


def test_pod_fields() -> None:
    doc = o.pod(
        "echo-1",
        "127.10.0.1",
        ns="shop",
        labels={"app": "echo"},
        sa="echo",
        ports=[{"name": "http-web", "containerPort": 8080}],
    )
    doc["status"]["podIPs"] = [{"ip": "127.10.0.1"}, {"ip": "fd00::1"}]
    w = parse(doc)
    assert isinstance(w, Workload)
    assert w.uid == "Kubernetes//v1/Pod/shop/echo-1"
    assert w.ips == ("127.10.0.1", "fd00::1")
    assert (w.service_account, w.node, w.phase, w.ready, w.serving) == (
        "echo",
        "dev-node",
        "Running",
        True,
        True,
    )
    assert w.ports == (ContainerPort("http-web", 8080, "TCP"),)


def test_pod_defaults_not_ready_without_status() -> None:
    doc = o.pod("p", "127.10.0.1")
    del doc["status"]
    del doc["spec"]["serviceAccountName"]
    w = parse(doc)
    assert (w.phase, w.ready, w.serving, w.ips, w.service_account) == ("Pending", False, False, (), "default")


def test_pod_use_waypoint_none_opts_out() -> None:
    w = parse(o.pod("p", "127.10.0.1", labels={"istio.io/use-waypoint": "none"}))
    assert w.use_waypoint is not None and w.use_waypoint.opt_out


def test_service_fields() -> None:
    doc = o.service(
        "echo",
        "127.0.200.1",
        ns="shop",
        selector={"app": "echo"},
        ports=[
            {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
            {"name": "grpc", "port": 7070},
            {"name": "web", "port": 81, "targetPort": "http-web"},
        ],
    )
    s = parse(doc)
    assert isinstance(s, Service)
    assert s.hostname == "echo.shop.svc.cluster.local"
    assert s.vips == ("127.0.200.1",)
    assert s.ports == (
        ServicePort("http", 80, 8080, "TCP", "http"),
        ServicePort("grpc", 7070, 7070, "TCP", None),  # targetPort defaults to port
        ServicePort("web", 81, "http-web", "TCP", None),
    )
    assert dict(s.selector or {}) == {"app": "echo"}


def test_headless_service_and_no_selector() -> None:
    s = parse(o.service("h", "None"))
    assert s.vips == () and s.selector is None


def test_waypoint_gateway() -> None:
    gw = o.waypoint_gateway(
        "wp",
        ns="shop",
        address="127.0.250.1",
        waypoint_for="all",
        annotations={"gateway.istio.io/service-account": "wp-sa"},
        allowed_from="All",
    )
    w = parse(gw)
    assert isinstance(w, Waypoint)
    assert (w.addresses, w.waypoint_for, w.service_account, w.allowed.source) == (
        ("127.0.250.1",),
        "all",
        "wp-sa",
        "All",
    )
    assert w.serves_services and w.serves_workloads


def test_waypoint_defaults() -> None:
    w = parse(o.waypoint_gateway("wp"))
    assert (w.addresses, w.waypoint_for, w.service_account, w.allowed.source) == ((), "service", "wp", "Same")
    assert w.serves_services and not w.serves_workloads


def test_non_waypoint_gateway_is_kept_raw_only() -> None:
    gw = o.waypoint_gateway("ingress")
    gw["spec"]["gatewayClassName"] = "istio"
    gw["spec"]["listeners"] = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    snap = snapshot_from_docs([gw])
    assert snap.waypoints == () and [x.name for x in snap.objects("Gateway")] == ["ingress"]


def test_endpoint_slice() -> None:
    doc = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": "echo-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "echo"},
        },
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {
                "addresses": ["127.10.0.1"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": "p1"},
            },
            {"addresses": ["127.10.0.2"], "conditions": {"ready": False}},
            {"addresses": ["127.10.0.3"]},
        ],
    }
    s = parse(doc)
    assert isinstance(s, EndpointSlice)
    assert s.service_name == "echo" and s.ports == (("http", 8080),)
    assert [(e.addresses, e.ready, e.pod_name) for e in s.endpoints] == [
        (("127.10.0.1",), True, "p1"),
        (("127.10.0.2",), False, None),
        (("127.10.0.3",), True, None),
    ]


def test_raw_kinds_kept_with_metadata_and_unknown_kinds_ignored() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "r",
            "namespace": "shop",
            "creationTimestamp": "2024-01-02T03:04:05Z",
            "annotations": {"a": "b"},
        },
        "spec": {},
    }
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    snap = snapshot_from_docs([route, deploy], source="x.yaml")
    (r,) = snap.objects("HTTPRoute")
    assert (r.kind, r.namespace, r.name, r.creation_timestamp, dict(r.annotations), r.source) == (
        "HTTPRoute",
        "shop",
        "r",
        "2024-01-02T03:04:05Z",
        {"a": "b"},
        "x.yaml",
    )
    assert snap.objects("Deployment") == [] and snap.problems == ()


def test_yaml_datetime_creation_timestamp_is_normalised() -> None:
    import datetime

    route = {
        "apiVersion": "v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "r",
            "creationTimestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        },
    }
    (r,) = snapshot_from_docs([route]).objects("HTTPRoute")
    assert r.creation_timestamp == "2024-01-02T03:04:05Z"


def test_registered_validator_runs_and_names_field() -> None:
    registry = default_registry()

    def no_rules(doc: Any) -> None:
        if not doc.get("spec", {}).get("rules"):
            raise ManifestError("spec.rules", "at least one rule")

    registry.register_kind("HTTPRoute", no_rules)
    registry.register_kind("Widget", cluster_scoped=True)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {},
    }
    with pytest.raises(ManifestError) as e:
        registry.parse(route, CTX)
    assert e.value.field == "spec.rules"
    widget = registry.parse(
        {"apiVersion": "x/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "n"}}, CTX
    )
    assert widget is not None and widget.obj.namespace == ""


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _del(path: str) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[parts[-1]]

    return apply


SVC = o.service("echo", "127.0.200.1", ports=[{"name": "http", "port": 80}, {"name": "tcp", "port": 9090}])
POD = o.pod("p", "127.10.0.1", ports=[{"name": "http", "containerPort": 8080}])
GW = o.waypoint_gateway("wp", address="127.0.250.1")
NS = o.namespace("shop")

REJECTIONS: list[tuple[str, dict[str, Any], Mutation, str]] = [
    ("no kind", SVC, _del("kind"), "kind"),
    ("no apiVersion", SVC, _del("apiVersion"), "apiVersion"),
    ("no metadata", SVC, _del("metadata"), "metadata"),
    ("no name", SVC, _del("metadata.name"), "metadata.name"),
    ("bad name", SVC, _set("metadata.name", "Echo_1"), "metadata.name"),
    ("bad namespace", SVC, _set("metadata.namespace", "a.b"), "metadata.namespace"),
    ("label not string", SVC, _set("metadata.labels", {"version": 1}), "metadata.labels.version"),
    (
        "dotted label not string",
        SVC,
        _set("metadata.labels", {"istio.io/x": True}),
        'metadata.labels["istio.io/x"]',
    ),
    ("service port number", SVC, _set("spec.ports.1.port", 70000), "spec.ports[1].port"),
    ("service port missing", SVC, _del("spec.ports.1.port"), "spec.ports[1].port"),
    ("service port not int", SVC, _set("spec.ports.0.port", "80x"), "spec.ports[0].port"),
    ("targetPort zero", SVC, _set("spec.ports.1.targetPort", 0), "spec.ports[1].targetPort"),
    ("targetPort bad name", SVC, _set("spec.ports.1.targetPort", "Not_A_Name"), "spec.ports[1].targetPort"),
    (
        "targetPort too long",
        SVC,
        _set("spec.ports.1.targetPort", "a-very-long-port-name"),
        "spec.ports[1].targetPort",
    ),
    ("unnamed of two", SVC, _del("spec.ports.1.name"), "spec.ports[1].name"),
    ("duplicate port name", SVC, _set("spec.ports.1.name", "http"), "spec.ports[1].name"),
    ("bad transport", SVC, _set("spec.ports.0.protocol", "QUIC"), "spec.ports[0].protocol"),
    ("clusterIP not ip", SVC, _set("spec.clusterIP", "10.0.0"), "spec.clusterIP"),
    ("clusterIPs mismatch", SVC, _set("spec.clusterIPs", ["127.0.200.9"]), "spec.clusterIPs[0]"),
    ("ports not list", SVC, _set("spec.ports", {"port": 80}), "spec.ports"),
    ("selector value", SVC, _set("spec.selector", {"app": None}), "spec.selector.app"),
    ("no spec", SVC, _del("spec"), "spec"),
    ("pod ip", POD, _set("status.podIP", "not-an-ip"), "status.podIP"),
    (
        "pod container port",
        POD,
        _set("spec.containers.0.ports.0.containerPort", -1),
        "spec.containers[0].ports[0].containerPort",
    ),
    (
        "pod container port name",
        POD,
        _set("spec.containers.0.ports.0.name", "http--x"),
        "spec.containers[0].ports[0].name",
    ),
    ("pod conditions", POD, _set("status.conditions", "Ready"), "status.conditions"),
    ("pod phase type", POD, _set("status.phase", 3), "status.phase"),
    ("waypoint without hbone", GW, _set("spec.listeners.0.protocol", "HTTP"), "spec.listeners"),
    ("waypoint hbone port", GW, _set("spec.listeners.0.port", 15009), "spec.listeners"),
    (
        "waypoint-for value",
        GW,
        _set("metadata.labels", {"istio.io/waypoint-for": "both"}),
        'metadata.labels["istio.io/waypoint-for"]',
    ),
    ("gateway address", GW, _set("spec.addresses.0.value", "nope"), "spec.addresses[0].value"),
    ("gateway class missing", GW, _del("spec.gatewayClassName"), "spec.gatewayClassName"),
    ("listener port", GW, _set("spec.listeners.0.port", "x"), "spec.listeners[0].port"),
    (
        "allowed from",
        GW,
        _set("spec.listeners.0.allowedRoutes", {"namespaces": {"from": "Any"}}),
        "spec.listeners[0].allowedRoutes.namespaces.from",
    ),
    ("namespace name", NS, _set("metadata.name", "a.b"), "metadata.name"),
    (
        "use-waypoint empty",
        NS,
        _set("metadata.labels", {"istio.io/use-waypoint": ""}),
        'metadata.labels["istio.io/use-waypoint"]',
    ),
]


@pytest.mark.parametrize(
    ("doc", "mutate", "field"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejection_names_field(doc: dict[str, Any], mutate: Mutation, field: str) -> None:
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(ManifestError) as e:
        default_registry().parse(bad, CTX)
    assert e.value.field == field, e.value


def test_slice_rejections_name_fields() -> None:
    base = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s"},
        "endpoints": [{"addresses": ["1.2.3.4"], "conditions": {"ready": "yes"}}],
    }
    with pytest.raises(ManifestError) as e:
        default_registry().parse(base, CTX)
    assert e.value.field == "endpoints[0].conditions.ready"
    base["endpoints"] = [{"addresses": []}]
    with pytest.raises(ManifestError) as e:
        default_registry().parse(base, CTX)
    assert e.value.field == "endpoints[0].addresses"
    base["addressType"] = "IPX"
    with pytest.raises(ManifestError) as e:
        default_registry().parse(base, CTX)
    assert e.value.field == "addressType"
