"""What routing precomputes or reads lazily for speed keeps its behaviour: header matching on the
codec's raw headers, decisions shared across requests, catch-all entries, the unrouted cache."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.routing.helpers import NS, SERVICES, SVC, backend, http_route, request
from waypoint.l7.routing.decision import DecisionKind, RequestView, ServiceRef
from waypoint.l7.routing.table import RouteTable, RouteTables

HEADER_RULES: list[dict[str, Any]] = [
    {
        "matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
        "backendRefs": [backend("v1")],
    },
    {
        "matches": [{"headers": [{"name": "x-user", "type": "RegularExpression", "value": "a.*,b"}]}],
        "backendRefs": [backend("v2")],
    },
    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend("v3")]},
]


def raw_view(headers: list[tuple[bytes, bytes]], path: str = "/") -> RequestView:
    """A view as the router builds it: the codec's bytes, decoded only on demand."""
    return RequestView("GET", path, "svc", (), SVC, False, NS, raw_headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"x-canary", b"true")],
        [(b"x-canary", b"false")],
        [(b"x-canary", b"tr"), (b"x-canary", b"ue")],  # joined "tr,ue": no match
        [(b"x-user", b"alice"), (b"x-user", b"b")],  # joined "alice,b" matches the regex
        [(b"x-user", b"alice")],
        [(b"accept", b"*/*"), (b"x-canary", b"true"), (b"x-user", b"ab,b")],
        [(b"x-caf\xc3\xa9", b"\xff"), (b"x-canary", b"true")],  # non-ASCII bytes decode as latin-1
    ],
)
def test_raw_headers_route_exactly_as_decoded_ones(headers: list[tuple[bytes, bytes]]) -> None:
    table = RouteTable.build(SVC, [http_route(HEADER_RULES)], SERVICES)
    decoded = RequestView(
        "GET", "/", "svc", tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers), SVC, False, NS
    )
    a = table.resolve(decoded, random.Random(0))
    b = table.resolve(raw_view(headers), random.Random(0))
    assert (a.kind, a.backend, a.route_name) == (b.kind, b.backend, b.route_name)


def test_view_reads_one_header_joined_and_decodes_all_only_when_asked() -> None:
    view = raw_view([(b"x-a", b"1"), (b"b", b"2"), (b"x-a", b"3")])
    assert view.header("x-a") == "1,3"  # Envoy's header matcher sees repeated values joined
    assert view.header("missing") is None
    assert view.headers == (("x-a", "1"), ("b", "2"), ("x-a", "3"))
    plain = RequestView("GET", "/", "svc", (("x-a", "1"), ("x-a", "3")), SVC)
    assert plain.header("x-a") == "1,3" and plain.header("b") is None


def test_a_request_independent_decision_is_built_once_and_shared() -> None:
    rule = {
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-r", "value": "1"}]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": backend("v2")}},
        ],
        "backendRefs": [backend("v1")],
    }
    table = RouteTable.build(SVC, [http_route([rule])], SERVICES)
    rng = random.Random(0)
    first, second = table.resolve(request(), rng), table.resolve(request("/other"), rng)
    assert first is second
    assert first.kind is DecisionKind.FORWARD and first.backend == ServiceRef(NS, "v1", 80)
    assert first.mirrors == (ServiceRef(NS, "v2", 80),)
    assert [m.set for m in first.request_headers] == [(("x-r", "1"),)]


@pytest.mark.parametrize(
    "filters",
    [
        [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}],
        [{"type": "RequestMirror", "requestMirror": {"backendRef": backend("v2"), "percent": 50}}],
    ],
)
def test_request_dependent_decisions_are_made_per_request(filters: list[dict[str, Any]]) -> None:
    table = RouteTable.build(SVC, [http_route([{"filters": filters, "backendRefs": [backend("v1")]}])], SERVICES)
    rng = random.Random(1)
    decisions = [table.resolve(request(f"/p{i}"), rng) for i in range(20)]
    assert len({id(d) for d in decisions}) == 20
    if "urlRewrite" in filters[0]:
        assert {d.new_path for d in decisions} == {"/new"}
    else:
        assert 0 < sum(bool(d.mirrors) for d in decisions) < 20  # sampled per request


def test_catch_all_entries_match_without_a_test_and_others_still_test() -> None:
    table = RouteTable.build(SVC, [http_route(HEADER_RULES)], SERVICES)
    flags = [(e.rule.backends[0].target, e.catch_all) for e in table.entries(NS)]
    assert flags == [
        (ServiceRef(NS, "v1", 80), False),
        (ServiceRef(NS, "v2", 80), False),
        (ServiceRef(NS, "v3", 80), True),
    ]
    exact = RouteTable.build(
        SVC, [http_route([{"matches": [{"path": {"type": "Exact", "value": "/"}}], "backendRefs": [backend("v1")]}])],
        SERVICES,
    )
    assert not exact.entries(NS)[0].catch_all
    assert exact.resolve(request("/x"), random.Random(0)).status == 404


def test_unrouted_decisions_are_reused_and_the_cache_stays_bounded() -> None:
    tables = RouteTables({})
    view = RequestView("GET", "/", "10.0.0.1:80", (), SVC)
    first = tables.resolve(view, random.Random(0))
    assert first is tables.resolve(view, random.Random(0))
    assert (first.kind, first.backend) == (DecisionKind.FORWARD, SVC)
    for port in range(5000):
        d = tables.resolve(RequestView("GET", "/", "x", (), ServiceRef(NS, "svc", port)), random.Random(0))
        assert d.backend == ServiceRef(NS, "svc", port)
    assert len(tables._unrouted) <= 4096
