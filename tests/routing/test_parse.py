"""Parsing: CRD defaults, and each rejection names its field (httproute_types.go, shared_types.go)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from waypoint.errors import ManifestError
from waypoint.l7.routing.model import HTTPRouteMatch, PathMatch
from waypoint.l7.routing.parse import (
    parse_httproute,
    parse_reference_grant,
    validate_grpcroute,
    validate_httproute,
)
from waypoint.l7.routing.parse_util import parse_duration

BASE: dict[str, Any] = {
    "kind": "HTTPRoute",
    "metadata": {"name": "r", "namespace": "ns1", "creationTimestamp": "2024-01-02T03:04:05Z"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "svc", "port": 80}],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                "backendRefs": [{"name": "v1", "port": 80}],
            }
        ],
    },
}


def with_rule(rule: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"]["rules"] = [rule]
    return obj


def test_defaults_follow_the_crd() -> None:
    route = parse_httproute({"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "n"}, "spec": {}})
    assert route.rules[0].matches == (HTTPRouteMatch(path=PathMatch("PathPrefix", "/")),)
    full = parse_httproute(BASE)
    assert full.rules[0].backend_refs[0].weight == 1
    assert full.rules[0].backend_refs[0].ref.kind == "Service"
    assert full.created is not None and full.created.year == 2024
    assert full.parent_refs[0].is_service and full.parent_refs[0].port == 80


def test_header_names_are_lower_cased_and_first_duplicate_wins() -> None:
    rule = {
        "matches": [{"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}],
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "X-B", "value": "v"}]},
            }
        ],
    }
    route = parse_httproute(with_rule(rule))
    m = route.rules[0].matches[0]
    assert [(h.name, h.value) for h in m.headers] == [("x-a", "1")]
    hm = route.rules[0].filters[0].request_header_modifier
    assert hm is not None and hm.set == (("x-b", "v"),)


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"matches": [{}, {"path": {"value": "nope"}}]}, "spec.rules[0].matches[1].path.value"),
        (
            {"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]},
            "spec.rules[0].matches[0].path.value",
        ),
        ({"matches": [{"path": {"type": "Glob", "value": "/"}}]}, "spec.rules[0].matches[0].path.type"),
        (
            {"matches": [{"headers": [{"name": "bad name", "value": "x"}]}]},
            "spec.rules[0].matches[0].headers[0].name",
        ),
        (
            {"matches": [{"queryParams": [{"name": "a", "value": "(", "type": "RegularExpression"}]}]},
            "spec.rules[0].matches[0].queryParams[0].value",
        ),
        ({"matches": [{"method": "FETCH"}]}, "spec.rules[0].matches[0].method"),
        ({"filters": [{"type": "Teleport"}]}, "spec.rules[0].filters[0].type"),
        ({"filters": [{"type": "RequestRedirect"}]}, "spec.rules[0].filters[0].requestRedirect"),
        (
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}]},
            "spec.rules[0].filters[0].requestRedirect.statusCode",
        ),
        (
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}]},
            "spec.rules[0].filters[0].requestRedirect.scheme",
        ),
        ({"backendRefs": [{"name": "v1", "port": 80, "weight": -1}]}, "spec.rules[0].backendRefs[0].weight"),
        ({"backendRefs": [{"name": "v1"}]}, "spec.rules[0].backendRefs[0].port"),
        ({"backendRefs": [{"name": "v1", "port": 70000}]}, "spec.rules[0].backendRefs[0].port"),
        ({"timeouts": {"request": "10 seconds"}}, "spec.rules[0].timeouts.request"),
        ({"timeouts": {"request": "1s", "backendRequest": "2s"}}, "spec.rules[0].timeouts.backendRequest"),
        ({"retry": {"codes": [200]}}, "spec.rules[0].retry.codes[0]"),
        ({"retry": {"backoff": "1d"}}, "spec.rules[0].retry.backoff"),
        (
            {"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                "type": "ReplaceFullPath", "replaceFullPath": "/caf\u00e9"}}}]},
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
        ),
        (
            {
                "matches": [{"path": {"type": "Exact", "value": "/a"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}},
                    }
                ],
            },
            "spec.rules[0].filters[0]",
        ),
        (
            {
                "filters": [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {
                            "backendRef": {"name": "v1", "port": 80},
                            "fraction": {"numerator": 3, "denominator": 2},
                        },
                    }
                ]
            },
            "spec.rules[0].filters[0].requestMirror.fraction",
        ),
    ],
)
def test_rejections_name_the_field(rule: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as info:
        validate_httproute(with_rule(rule))
    assert info.value.field == field


def test_grpc_rejections() -> None:
    obj: dict[str, Any] = {
        "kind": "GRPCRoute",
        "metadata": {"name": "g", "namespace": "n"},
        "spec": {"rules": [{"matches": [{"method": {"type": "Exact"}}]}]},
    }
    with pytest.raises(ManifestError) as info:
        validate_grpcroute(obj)
    assert info.value.field == "spec.rules[0].matches[0].method"
    obj["spec"]["rules"] = [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}]
    with pytest.raises(ManifestError) as info:
        validate_grpcroute(obj)
    assert info.value.field == "spec.rules[0].filters[0].type"


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0s", 0.0)])
def test_gateway_api_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "f") == pytest.approx(seconds)


def test_mirror_fraction_becomes_percent() -> None:
    rule = {
        "filters": [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": {"name": "v1", "port": 80},
                    "fraction": {"numerator": 1, "denominator": 4},
                },
            }
        ]
    }
    mirror = parse_httproute(with_rule(rule)).rules[0].filters[0].request_mirror
    assert mirror is not None and mirror.percent == 25.0


def test_reference_grant() -> None:
    grant = parse_reference_grant(
        {
            "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "ns2"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "ns1"}],
                "to": [{"group": "", "kind": "Service"}],
            },
        }
    )
    assert grant.to[0].name is None and grant.from_[0].namespace == "ns1"
