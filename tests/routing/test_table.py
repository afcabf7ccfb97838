"""Table behaviour: weights, invalid backends (500), ReferenceGrant, mirrors, consumer routes,
attachment by port, timeouts/retry, and what happens with no route; plus route status."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.routing.helpers import NS, SERVICES, SVC, backend, http_route, request, resolve
from waypoint.l7.routing.decision import ISTIO_DEFAULT_RETRY, DecisionKind, RequestView, ServiceRef
from waypoint.l7.routing.parse import parse_httproute, parse_reference_grant
from waypoint.l7.routing.refs import GatewayParent
from waypoint.l7.routing.status import route_status
from waypoint.l7.routing.table import BoundResolver, RouteTable, RouteTables


def split(weights: dict[str, int], n: int = 1000, seed: int = 7) -> dict[str, int]:
    rule = {"backendRefs": [backend(name, weight=w) for name, w in weights.items()]}
    table = RouteTable.build(SVC, [http_route([rule])], SERVICES)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for _ in range(n):
        d = table.resolve(request(), rng)
        key = d.backend.name if d.backend is not None else str(d.status)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_weight_split_80_20_within_statistical_bounds() -> None:
    counts = split({"v1": 80, "v2": 20})
    # binomial sd for p=0.2, n=1000 is 12.6: allow 4 sd
    assert abs(counts["v2"] - 200) < 51 and counts["v1"] + counts["v2"] == 1000


def test_zero_weight_backend_never_picked_and_all_zero_is_500() -> None:
    assert set(split({"v1": 1, "v2": 0}, n=200)) == {"v1"}
    assert split({"v1": 0, "v2": 0}, n=10) == {"500": 10}
    assert resolve([http_route([{}])], request()).status == 500  # no backendRefs at all


def test_invalid_backend_keeps_its_share_as_500() -> None:
    counts = split({"v1": 50, "missing": 50})
    assert set(counts) == {"v1", "500"} and abs(counts["500"] - 500) < 80


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (backend("missing"), "BackendNotFound"),
        (backend("v1", 9999), "BackendNotFound"),
        (backend("v1", kind="Pod"), "InvalidKind"),
        (backend("v1", group="example.com", kind="Service"), "InvalidKind"),
        (backend("other", namespace="ns2"), "RefNotPermitted"),
    ],
)
def test_invalid_refs_answer_500_and_status_says_why(ref: dict[str, Any], reason: str) -> None:
    route = http_route([{"backendRefs": [ref]}])
    d = resolve([route], request())
    assert (d.kind, d.status, d.extra["reason"]) == (DecisionKind.LOCAL, 500, reason)
    resolved = route_status(route, SERVICES)[0].condition("ResolvedRefs")
    assert resolved is not None and (resolved.status, resolved.reason) == ("False", reason)


def test_reference_grant_permits_cross_namespace_backend() -> None:
    route = http_route([{"backendRefs": [backend("other", namespace="ns2")]}])
    grant = parse_reference_grant(
        {
            "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "ns2"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
                "to": [{"group": "", "kind": "Service", "name": "other"}],
            },
        }
    )
    d = resolve([route], request(), grants=(grant,))
    assert d.backend == ServiceRef("ns2", "other", 80)
    status = route_status(route, SERVICES, [grant])[0]
    assert [(c.type, c.status) for c in status.conditions] == [("Accepted", "True"), ("ResolvedRefs", "True")]


def test_mirrors_all_and_sampled() -> None:
    rule = {
        "filters": [
            {"type": "RequestMirror", "requestMirror": {"backendRef": backend("v2")}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": backend("v3"), "percent": 20}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": backend("missing")}},
        ],
        "backendRefs": [backend("v1")],
    }
    table = RouteTable.build(SVC, [http_route([rule])], SERVICES)
    rng = random.Random(3)
    n, v3 = 1000, 0
    for _ in range(n):
        d = table.resolve(request(), rng)
        assert d.mirrors[0] == ServiceRef(NS, "v2", 80)
        assert ServiceRef(NS, "missing", 80) not in d.mirrors
        v3 += ServiceRef(NS, "v3", 80) in d.mirrors
    assert abs(v3 - 200) < 51


def test_timeouts_and_retry_defaults() -> None:
    rule = {
        "timeouts": {"request": "10s", "backendRequest": "2s"},
        "retry": {"codes": [503]},
        "backendRefs": [backend("v1")],
    }
    d = resolve([http_route([rule])], request())
    assert (d.request_timeout_s, d.backend_timeout_s) == (10.0, 2.0)
    assert d.retry is not None and (d.retry.attempts, d.retry.codes) == (2, (503,))
    d = resolve([http_route([{"timeouts": {"request": "0s"}, "backendRefs": [backend("v1")]}])], request())
    assert d.request_timeout_s is None and d.retry == ISTIO_DEFAULT_RETRY  # Istio's DefaultPolicy: 2 x 503
    d = resolve([http_route([{"retry": {"attempts": 0}, "backendRefs": [backend("v1")]}])], request())
    assert d.retry is not None and d.retry.attempts == 0  # an explicit 0 disables retries


def test_extension_ref_filter_answers_500() -> None:
    rule = {
        "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "F", "name": "f"}}],
        "backendRefs": [backend("v1")],
    }
    assert resolve([http_route([rule])], request()).status == 500


def test_no_route_attached_forwards_to_dialled_and_no_match_is_404() -> None:
    table = RouteTable.build(SVC, [], SERVICES)
    d = table.resolve(request(), random.Random(0))
    assert (d.kind, d.backend) == (DecisionKind.FORWARD, SVC)
    d = resolve(
        [
            http_route(
                [{"matches": [{"path": {"type": "Exact", "value": "/only"}}], "backendRefs": [backend("v1")]}]
            )
        ],
        request("/other"),
    )
    assert (d.kind, d.status) == (DecisionKind.LOCAL, 404)


def mesh_route(parent: dict[str, Any], ns: str = NS, name: str = "r", to: str = "v1") -> Any:
    return parse_httproute(
        {
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [backend(to, namespace=NS)]}]},
        }
    )


def test_parent_port_and_section_name_select_the_service_port() -> None:
    on_80 = mesh_route({"group": "", "kind": "Service", "name": "svc", "port": 80})
    by_name = mesh_route({"group": "", "kind": "Service", "name": "svc", "sectionName": "http-alt"}, name="s")
    tables = RouteTables.build([on_80, by_name], SERVICES)
    assert tables.table(ServiceRef(NS, "svc", 80)) is not None
    alt = tables.table(ServiceRef(NS, "svc", 8080))
    assert alt is not None and [e.rule.route_name for e in alt.entries(NS)] == [f"HTTPRoute/{NS}/s#0"]
    assert tables.table(ServiceRef(NS, "v1", 80)) is None
    pod = RequestView("GET", "/", "10.0.0.1:80", (), dialled=None)
    assert tables.resolve(pod, random.Random(0)).backend is None  # a pod dialled directly: untouched


def test_consumer_route_applies_only_to_its_namespace_and_wins_there() -> None:
    producer = http_route([{"backendRefs": [backend("v2")]}], name="prod")
    # MeshConsumerRoute: a consumer route may send to its own parent Service without a ReferenceGrant
    consumer = mesh_route(
        {"group": "", "kind": "Service", "name": "svc", "namespace": NS}, ns="consumer", name="c", to="svc"
    )
    table = RouteTable.build(SVC, [producer, consumer], SERVICES)
    assert table.resolve(request(source_namespace="consumer"), random.Random(0)).backend == SVC
    assert table.resolve(request(source_namespace=NS), random.Random(0)).backend == ServiceRef(NS, "v2", 80)
    assert table.resolve(request(source_namespace=None), random.Random(0)).backend == ServiceRef(NS, "v2", 80)
    # ...but to any other Service across namespaces it needs one
    other = mesh_route(
        {"group": "", "kind": "Service", "name": "svc", "namespace": NS}, ns="consumer", name="o"
    )
    d = RouteTable.build(SVC, [other], SERVICES).resolve(
        request(source_namespace="consumer"), random.Random(0)
    )
    assert (d.status, d.extra["reason"]) == (500, "RefNotPermitted")


def test_status_accepted_false_for_unknown_parent() -> None:
    route = mesh_route({"group": "", "kind": "Service", "name": "nope"})
    accepted = route_status(route, SERVICES)[0].condition("Accepted")
    assert accepted is not None and (accepted.status, accepted.reason) == ("False", "NoMatchingParent")


def test_bound_resolver_fits_the_router_protocol() -> None:
    tables = RouteTables.build([http_route([{"backendRefs": [backend("v1")]}])], SERVICES)
    bound = BoundResolver(tables, random.Random(0))
    assert bound.resolve(request()).backend == ServiceRef(NS, "v1", 80)
    unrouted = RequestView("GET", "/", "v2", (), dialled=ServiceRef(NS, "v2", 80))
    assert bound.resolve(unrouted).backend == ServiceRef(NS, "v2", 80)


def test_gateway_parent_matches_route_hostnames() -> None:
    route = parse_httproute(
        {
            "kind": "HTTPRoute",
            "metadata": {"name": "gw", "namespace": NS},
            "spec": {
                "parentRefs": [{"name": "waypoint"}],
                "hostnames": ["*.example.com", "exact.test"],
                "rules": [{"backendRefs": [backend("v1")]}],
            },
        }
    )
    table = RouteTable.build(GatewayParent(NS, "waypoint"), [route], SERVICES)
    rng = random.Random(0)
    assert table.resolve(request(authority="a.example.com:8080"), rng).backend == ServiceRef(NS, "v1", 80)
    assert table.resolve(request(authority="exact.test"), rng).backend == ServiceRef(NS, "v1", 80)
    assert table.resolve(request(authority="example.com"), rng).status == 404
