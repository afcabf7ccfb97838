"""Every match type and every precedence rule (httproute_types.go HTTPRouteRule.Matches;
Istio conversion.go sortHTTPRoutes: Exact > Prefix > Regex, then length, method, headers, query)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.routing.helpers import backend, grpc_route, http_route, request, resolve
from waypoint.l7.routing.decision import DecisionKind


def to(name: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"backendRefs": [backend(name)]}
    if match is not None:
        rule["matches"] = [match]
    return rule


def picked(routes: list[Any], **req: Any) -> str | int:
    d = resolve(routes, request(**req))
    if d.kind is DecisionKind.FORWARD:
        assert d.backend is not None
        return d.backend.name
    return d.status


@pytest.mark.parametrize(
    ("match", "path", "hit"),
    [
        ({"path": {"type": "Exact", "value": "/a"}}, "/a", True),
        ({"path": {"type": "Exact", "value": "/a"}}, "/a/", False),
        ({"path": {"type": "Exact", "value": "/a"}}, "/a?x=1", True),
        ({"path": {"type": "PathPrefix", "value": "/v2"}}, "/v2", True),
        ({"path": {"type": "PathPrefix", "value": "/v2"}}, "/v2/", True),
        ({"path": {"type": "PathPrefix", "value": "/v2"}}, "/v2/x", True),
        ({"path": {"type": "PathPrefix", "value": "/v2"}}, "/v2example", False),
        ({"path": {"type": "PathPrefix", "value": "/v2/"}}, "/v2", True),  # trailing "/" ignored
        ({"path": {"type": "PathPrefix", "value": "/"}}, "/anything", True),
        ({"path": {"type": "RegularExpression", "value": "/r/[0-9]+"}}, "/r/12", True),
        ({"path": {"type": "RegularExpression", "value": "/r/[0-9]+"}}, "/r/12/x", False),  # full match
        ({"headers": [{"name": "Version", "value": "one"}]}, "/", False),
        ({"method": "POST"}, "/", False),
        ({"queryParams": [{"name": "animal", "value": "whale"}]}, "/?animal=whale&x=y", True),
        ({"queryParams": [{"name": "animal", "value": "whale"}]}, "/?animal=whaledolphin", False),
        (
            {"queryParams": [{"name": "animal", "value": "whale"}]},
            "/?animal=dog&animal=whale",
            False,
        ),  # first value
        ({"queryParams": [{"name": "a", "value": "x y"}]}, "/?a=x%20y", True),
        ({"queryParams": [{"name": "a", "value": "wh.*", "type": "RegularExpression"}]}, "/?a=whale", True),
    ],
)
def test_http_match_types(match: dict[str, Any], path: str, hit: bool) -> None:
    assert picked([http_route([to("v1", match)])], path=path) == ("v1" if hit else 404)


def test_headers_case_insensitive_names_case_sensitive_values_and_regex() -> None:
    routes = [
        http_route(
            [
                to("v1", {"headers": [{"name": "X-Ver", "value": "One"}]}),
                to("v2", {"headers": [{"name": "x-re", "value": "a+b", "type": "RegularExpression"}]}),
            ]
        )
    ]
    assert picked(routes, headers={"x-ver": "One"}) == "v1"
    assert picked(routes, headers={"X-VER": "one"}) == 404
    assert picked(routes, headers={"x-re": "aaab"}) == "v2"
    assert picked(routes, headers={"x-re": "aaabc"}) == 404


def test_method_match() -> None:
    routes = [http_route([to("v1", {"method": "POST"}), to("v2")])]
    assert picked(routes, method="POST") == "v1"
    assert picked(routes, method="GET") == "v2"


@pytest.mark.parametrize(
    ("rules", "req", "want"),
    [
        # Exact beats a longer prefix
        (
            [
                to("v1", {"path": {"type": "PathPrefix", "value": "/abc/def"}}),
                to("v2", {"path": {"type": "Exact", "value": "/abc/def"}}),
            ],
            {"path": "/abc/def"},
            "v2",
        ),
        # longest prefix wins, whatever the rule order
        (
            [to("v1", {"path": {"value": "/a"}}), to("v2", {"path": {"value": "/a/b"}})],
            {"path": "/a/b/c"},
            "v2",
        ),
        # prefix beats regex (Istio rank)
        (
            [
                to("v1", {"path": {"type": "RegularExpression", "value": "/a/.*"}}),
                to("v2", {"path": {"value": "/a"}}),
            ],
            {"path": "/a/x"},
            "v2",
        ),
        # method beats headers
        (
            [to("v1", {"headers": [{"name": "h", "value": "1"}]}), to("v2", {"method": "GET"})],
            {"headers": {"h": "1"}},
            "v2",
        ),
        # more headers beat fewer
        (
            [
                to("v1", {"headers": [{"name": "a", "value": "1"}]}),
                to("v2", {"headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]}),
            ],
            {"headers": {"a": "1", "b": "2"}},
            "v2",
        ),
        # headers beat query params
        (
            [
                to("v1", {"queryParams": [{"name": "q", "value": "1"}]}),
                to("v2", {"headers": [{"name": "h", "value": "1"}]}),
            ],
            {"path": "/?q=1", "headers": {"h": "1"}},
            "v2",
        ),
        # more query params beat fewer
        (
            [
                to("v1", {"queryParams": [{"name": "q", "value": "1"}]}),
                to("v2", {"queryParams": [{"name": "q", "value": "1"}, {"name": "r", "value": "2"}]}),
            ],
            {"path": "/?q=1&r=2"},
            "v2",
        ),
        # full tie: first rule
        ([to("v1", {"path": {"value": "/x"}}), to("v2", {"path": {"value": "/x"}})], {"path": "/x"}, "v1"),
    ],
)
def test_precedence_within_a_route(rules: list[dict[str, Any]], req: dict[str, Any], want: str) -> None:
    assert picked([http_route(rules)], **req) == want


def test_precedence_across_routes_oldest_then_name() -> None:
    same = to("v1", {"path": {"value": "/p"}})
    other = to("v2", {"path": {"value": "/p"}})
    old = http_route([other], name="zzz", creationTimestamp="2020-01-01T00:00:00Z")
    new = http_route([same], name="aaa", creationTimestamp="2024-01-01T00:00:00Z")
    assert picked([new, old], path="/p") == "v2"  # oldest wins over alphabetical
    a = http_route([same], name="a", creationTimestamp="2024-01-01T00:00:00Z")
    b = http_route([other], name="b", creationTimestamp="2024-01-01T00:00:00Z")
    assert picked([b, a], path="/p") == "v1"  # then "ns/name"
    # a more specific match in a newer route still wins
    specific = http_route(
        [to("v3", {"path": {"value": "/p/q"}})], name="n", creationTimestamp="2025-01-01T00:00:00Z"
    )
    assert picked([old, specific], path="/p/q") == "v3"


def test_matches_of_one_rule_are_ored_and_ranked_separately() -> None:
    rule = {
        "matches": [{"path": {"value": "/v2"}}, {"headers": [{"name": "version", "value": "two"}]}],
        "backendRefs": [backend("v2")],
    }
    routes = [http_route([to("v1", {"path": {"value": "/"}}), rule])]
    assert picked(routes, path="/v2/x") == "v2"
    assert picked(routes, path="/", headers={"version": "two"}) == "v2"
    assert picked(routes, path="/v2example") == "v1"


@pytest.mark.parametrize(
    ("method", "path", "hit"),
    [
        ({"service": "pkg.Svc", "method": "Echo"}, "/pkg.Svc/Echo", True),
        ({"service": "pkg.Svc", "method": "Echo"}, "/pkg.Svc/EchoTwo", False),
        ({"service": "pkg.Svc"}, "/pkg.Svc/Anything", True),
        ({"method": "Echo"}, "/other.Svc/Echo", True),
        ({"type": "RegularExpression", "service": "pkg\\..*", "method": "Echo.*"}, "/pkg.Svc/EchoTwo", True),
        ({"type": "RegularExpression", "service": "pkg\\..*"}, "/other.Svc/Echo", False),
    ],
)
def test_grpc_method_match(method: dict[str, Any], path: str, hit: bool) -> None:
    routes = [grpc_route([{"matches": [{"method": method}], "backendRefs": [backend("v1", 7070)]}])]
    d = resolve(routes, request(path=path, method="POST", grpc=True))
    if hit:
        assert d.kind is DecisionKind.FORWARD and d.backend is not None and d.backend.name == "v1"
    else:  # gRPC no-match: 404, read by the client as Unimplemented
        assert (d.kind, d.status, d.extra.get("grpc_status")) == (DecisionKind.LOCAL, 404, "12")


def test_grpc_precedence_service_then_method_then_headers() -> None:
    rules = [
        {"matches": [{"headers": [{"name": "a", "value": "1"}]}], "backendRefs": [backend("v1", 7070)]},
        {"matches": [{"method": {"method": "Echo"}}], "backendRefs": [backend("v2", 7070)]},
        {"matches": [{"method": {"service": "pkg.Svc"}}], "backendRefs": [backend("v3", 80)]},
    ]
    d = resolve(
        [grpc_route(rules)], request(path="/pkg.Svc/Echo", method="POST", headers={"a": "1"}, grpc=True)
    )
    assert d.backend is not None and d.backend.name == "v3"
    d = resolve([grpc_route(rules)], request(path="/x.Y/Echo", method="POST", headers={"a": "1"}, grpc=True))
    assert d.backend is not None and d.backend.name == "v2"


def test_grpc_route_wins_for_grpc_requests_http_route_for_others() -> None:
    routes = [http_route([to("v1")]), grpc_route([{"backendRefs": [backend("v2", 7070)]}])]
    grpc = resolve(routes, request(path="/a.B/C", method="POST", grpc=True))
    plain = resolve(routes, request(path="/a.B/C"))
    assert grpc.backend is not None and grpc.backend.name == "v2"
    assert plain.backend is not None and plain.backend.name == "v1"
