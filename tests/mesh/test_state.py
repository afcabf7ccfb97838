"""MeshState lookups: names, enrolment, waypoint attachment, endpoints, protocols."""

from __future__ import annotations

import pytest

from tests.mesh import objects as o
from waypoint.mesh.model import ServicePort
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.mesh.state import MeshState, port_protocol


def state_of(*docs: dict) -> MeshState:  # type: ignore[type-arg]
    snap = snapshot_from_docs(docs)
    assert snap.problems == ()
    return MeshState(snap)


@pytest.mark.parametrize(
    ("host", "client_ns", "found"),
    [
        ("echo", "shop", "shop/echo"),
        ("echo", "other", None),
        ("echo.shop", "other", "shop/echo"),
        ("echo.shop.svc", "other", "shop/echo"),
        ("echo.shop.svc.cluster.local", "other", "shop/echo"),
        ("echo.shop.svc.cluster.local.", "other", "shop/echo"),
        ("ECHO.shop", "other", "shop/echo"),
        ("echo.shop.svc.other.domain", "other", None),
        ("example.com", "shop", None),
    ],
)
def test_service_by_name(host: str, client_ns: str, found: str | None) -> None:
    state = state_of(o.service("echo", "127.0.200.1", ns="shop"))
    svc = state.service_by_name(host, client_ns)
    assert (f"{svc.namespace}/{svc.name}" if svc else None) == found


@pytest.mark.parametrize(
    ("ns_label", "pod_label", "ambient"),
    [
        ("ambient", None, True),
        (None, None, False),
        ("ambient", "none", False),
        (None, "ambient", True),
    ],
)
def test_ambient_enrolment(ns_label: str | None, pod_label: str | None, ambient: bool) -> None:
    ns = o.namespace("shop", **({"istio.io/dataplane-mode": ns_label} if ns_label else {}))
    p = o.pod(
        "p", "127.10.0.1", ns="shop", labels={"istio.io/dataplane-mode": pod_label} if pod_label else {}
    )
    state = state_of(ns, p)
    w = state.workload_by_ip("127.10.0.1")
    assert w is not None and state.is_ambient(w) is ambient
    assert str(state.identity_of(w)) == "spiffe://cluster.local/ns/shop/sa/default"


def test_waypoint_precedence_and_waypoint_for() -> None:
    state = state_of(
        o.namespace("shop", **{"istio.io/use-waypoint": "ns-wp"}),
        o.waypoint_gateway("ns-wp", ns="shop", address="127.0.250.1", waypoint_for="all"),
        o.waypoint_gateway("svc-wp", ns="shop", address="127.0.250.2"),
        o.waypoint_gateway("wl-wp", ns="shop", address="127.0.250.3", waypoint_for="workload"),
        o.service("inherits", "127.0.200.1", ns="shop"),
        o.service("own", "127.0.200.2", ns="shop", labels={"istio.io/use-waypoint": "svc-wp"}),
        o.service("optout", "127.0.200.3", ns="shop", labels={"istio.io/use-waypoint": "none"}),
        o.service("wrongtype", "127.0.200.4", ns="shop", labels={"istio.io/use-waypoint": "wl-wp"}),
        o.service("missing", "127.0.200.5", ns="shop", labels={"istio.io/use-waypoint": "nope"}),
        o.pod("p-inherit", "127.10.0.1", ns="shop"),
        o.pod("p-svc-only", "127.10.0.2", ns="shop", labels={"istio.io/use-waypoint": "svc-wp"}),
        o.pod("p-wl", "127.10.0.3", ns="shop", labels={"istio.io/use-waypoint": "wl-wp"}),
    )

    def svc_wp(name: str) -> str | None:
        s = state.service("shop", name)
        assert s is not None
        wp = state.waypoint_for_service(s)
        return wp.name if wp else None

    def wl_wp(ip: str) -> str | None:
        w = state.workload_by_ip(ip)
        assert w is not None
        wp = state.waypoint_for_workload(w)
        return wp.name if wp else None

    assert [svc_wp(n) for n in ("inherits", "own", "optout", "wrongtype", "missing")] == [
        "ns-wp",
        "svc-wp",
        None,
        None,
        None,
    ]
    assert [wl_wp(ip) for ip in ("127.10.0.1", "127.10.0.2", "127.10.0.3")] == ["ns-wp", None, "wl-wp"]


def test_cross_namespace_waypoint_needs_allowed_routes() -> None:
    def wp_of(allowed: str | None) -> str | None:
        state = state_of(
            o.waypoint_gateway("shared", ns="infra", address="127.0.250.1", allowed_from=allowed),
            o.service(
                "s",
                "127.0.200.1",
                ns="shop",
                labels={"istio.io/use-waypoint": "shared", "istio.io/use-waypoint-namespace": "infra"},
            ),
        )
        s = state.service("shop", "s")
        assert s is not None
        wp = state.waypoint_for_service(s)
        return f"{wp.namespace}/{wp.name}" if wp else None

    assert wp_of(None) is None  # default Same
    assert wp_of("All") == "infra/shared"


def test_waypoint_identity_from_pods_else_annotation_else_name() -> None:
    gw = o.waypoint_gateway("wp", ns="shop")
    pod = o.pod(
        "wp-1", "127.10.0.9", ns="shop", sa="wp-sa", labels={"gateway.networking.k8s.io/gateway-name": "wp"}
    )
    state = state_of(gw, pod)
    wp = state.waypoint("shop", "wp")
    assert wp is not None
    assert [str(i) for i in state.waypoint_identities(wp)] == ["spiffe://cluster.local/ns/shop/sa/wp-sa"]
    assert state.waypoint_addresses(wp) == ("127.10.0.9",)  # no Gateway address: its pods
    annotated = o.waypoint_gateway(
        "wp", ns="shop", annotations={"gateway.istio.io/service-account": "custom"}
    )
    state = state_of(annotated)
    wp = state.waypoint("shop", "wp")
    assert wp is not None and [i.service_account for i in state.waypoint_identities(wp)] == ["custom"]
    state = state_of(o.waypoint_gateway("wp", ns="shop", address="127.0.250.1"))
    wp = state.waypoint("shop", "wp")
    assert wp is not None and [i.service_account for i in state.waypoint_identities(wp)] == ["wp"]
    standin = state.workload_by_ip("127.0.250.1")  # a waypoint with an address but no pods
    assert standin is not None and standin.gateway_name == "wp" and not state.is_ambient(standin)


def test_endpoints_ready_only_and_named_target_port() -> None:
    state = state_of(
        o.service(
            "s",
            "127.0.200.1",
            selector={"app": "a"},
            ports=[
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "tcp", "port": 90, "targetPort": 9090},
            ],
        ),
        o.pod("a1", "127.10.0.1", labels={"app": "a"}, ports=[{"name": "web", "containerPort": 8080}]),
        o.pod("a2", "127.10.0.2", labels={"app": "a"}, ports=[{"name": "web", "containerPort": 8081}]),
        o.pod("a3", "127.10.0.3", labels={"app": "a"}),  # no port named "web"
        o.pod("a4", "127.10.0.4", labels={"app": "a"}, ready=False),
        o.pod("a5", "127.10.0.5", labels={"app": "a"}, phase="Succeeded"),
        o.pod("b1", "127.10.0.6", labels={"app": "b"}),
    )
    svc = state.service("default", "s")
    assert svc is not None
    assert [(e.workload.name, e.ip, e.port) for e in state.endpoints(svc, 80)] == [
        ("a1", "127.10.0.1", 8080),
        ("a2", "127.10.0.2", 8081),
    ]
    assert [e.workload.name for e in state.endpoints(svc, 90)] == ["a1", "a2", "a3"]
    assert state.endpoints(svc, 91) == ()
    assert state.endpoints(svc, 80) is state.endpoints(svc, 80)  # memoised per snapshot
    a1 = state.workload_by_ip("127.10.0.1")
    assert a1 is not None and [s.name for s in state.services_of(a1)] == ["s"]


def test_endpoints_from_endpoint_slices() -> None:
    slice_doc = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["127.10.0.1"], "targetRef": {"kind": "Pod", "name": "a1"}},
            {"addresses": ["192.0.2.7"]},
            {"addresses": ["127.10.0.2"], "conditions": {"ready": False}},
        ],
    }
    state = state_of(o.service("s", "127.0.200.1"), o.pod("a1", "127.10.0.1"), slice_doc)
    svc = state.service("default", "s")
    assert svc is not None
    eps = state.endpoints(svc, 80)
    assert [(e.workload.name, e.ip, e.port) for e in eps] == [
        ("a1", "127.10.0.1", 8080),
        ("192.0.2.7", "192.0.2.7", 8080),
    ]
    assert not state.is_ambient(eps[1].workload)


@pytest.mark.parametrize(
    ("name", "app", "port", "transport", "protocol"),
    [
        ("http", None, 80, "TCP", "HTTP"),
        ("http-alt", None, 8080, "TCP", "HTTP"),
        ("http2-x", None, 80, "TCP", "HTTP2"),
        ("grpc", None, 7070, "TCP", "GRPC"),
        ("grpc-web", None, 80, "TCP", "GRPC-Web"),
        ("grpc-web-x", None, 80, "TCP", "GRPC-Web"),
        ("tcp", None, 9090, "TCP", "TCP"),
        ("https", None, 443, "TCP", "HTTPS"),
        ("web", None, 80, "TCP", ""),
        ("", None, 80, "TCP", ""),
        ("web", None, 3306, "TCP", "TCP"),
        ("grpc", "kubernetes.io/h2c", 7070, "TCP", "HTTP2"),
        ("tcp", "http", 80, "TCP", "HTTP"),
        ("http", "tcp", 80, "TCP", "TCP"),
        ("x", "kubernetes.io/ws", 80, "TCP", "HTTP"),
        ("http", None, 53, "UDP", "UDP"),
        ("HTTP", None, 80, "TCP", "HTTP"),
    ],
)
def test_port_protocol(name: str, app: str | None, port: int, transport: str, protocol: str) -> None:
    # IS:pkg/config/kube/conversion.go ConvertProtocol + IS:pkg/config/protocol/instance.go Parse
    assert port_protocol(ServicePort(name, port, port, transport, app)) == protocol
