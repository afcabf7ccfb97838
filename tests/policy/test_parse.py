"""The validator rejects what istiod's admission rejects, naming the field
(``IS:pkg/config/validation/validation.go`` ``ValidateAuthorizationPolicy``,
``IS:pkg/config/security/security.go`` ``ValidateAttribute``/``ValidateIPs``/``ValidatePorts``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.policy import world
from waypoint.errors import ManifestError
from waypoint.policy.authz import parse_authorization_policy, validate_authorization_policy
from waypoint.policy.authz.model import Action

FULL_SPEC: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "b"}},
    "action": "ALLOW",
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": ["cluster.local/ns/ns1/sa/a"],
                        "notPrincipals": ["*/sa/x"],
                        "namespaces": ["ns1"],
                        "notNamespaces": ["ns3*"],
                        "ipBlocks": ["10.0.0.0/8", "fd00::1"],
                        "notIpBlocks": ["10.9.0.0/16"],
                        "remoteIpBlocks": ["192.168.0.0/16"],
                        "requestPrincipals": ["issuer/sub"],
                    }
                },
                {"source": {"serviceAccounts": ["a", "ns2/a"], "notServiceAccounts": ["b"]}},
            ],
            "to": [
                {
                    "operation": {
                        "hosts": ["*.example.com"],
                        "notHosts": ["deny.example.com"],
                        "ports": ["8080"],
                        "notPorts": ["9090"],
                        "methods": ["GET"],
                        "notMethods": ["DELETE"],
                        "paths": ["/api/{*}/items/{**}", "/info*"],
                        "notPaths": ["*.secret"],
                    }
                }
            ],
            "when": [
                {"key": "request.headers[X-Foo]", "values": ["bar"]},
                {"key": "source.ip", "notValues": ["10.1.2.3"]},
                {"key": "destination.port", "values": ["8080"]},
                {"key": "connection.sni", "values": ["*.example.com"]},
                {"key": "request.auth.claims[iss]", "values": ["me"]},
            ],
        }
    ],
}


def test_accepts_every_field_and_keeps_values() -> None:
    doc = world.policy("full", FULL_SPEC)
    validate_authorization_policy(doc)
    p = parse_authorization_policy(doc, "ns1")
    assert p.action is Action.ALLOW and p.key == "ns1/full"
    assert p.rules[0].operations[0].ports == (8080,)
    assert p.rules[0].conditions[0].header == "x-foo"  # header names compare lower-cased
    assert p.selector == {"app": "b"}


def test_dry_run_annotation_is_parsed_like_go_parsebool() -> None:
    assert parse_authorization_policy(world.policy("x", {}, annotations={"istio.io/dry-run": "True"}), "ns1").dry_run
    # an unparsable value is enforced, as istiod does ("proceed anyway")
    assert not parse_authorization_policy(world.policy("x", {}, annotations={"istio.io/dry-run": "yes"}), "ns1").dry_run


def _rule(**parts: Any) -> dict[str, Any]:
    return {"rules": [parts]}


REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown action", {"action": "REJECT"}, "spec.action"),
    ("selector and targetRefs", {"selector": {}, "targetRefs": [{"kind": "Service", "name": "b"}]}, "spec"),
    ("DENY without rules", {"action": "DENY"}, "spec.rules"),
    ("CUSTOM without rules", {"action": "CUSTOM", "provider": {"name": "opa"}}, "spec.rules"),
    ("CUSTOM without provider name", {"action": "CUSTOM", "provider": {}, "rules": [{}]}, "spec.provider.name"),
    ("provider on ALLOW", {"provider": {"name": "opa"}, "rules": [{}]}, "spec.provider"),
    (
        "CUSTOM with principals",
        {"action": "CUSTOM", "provider": {"name": "x"}, **_rule(**{"from": [{"source": {"principals": ["a"]}}]})},
        "spec.rules[0].from[0].source.principals",
    ),
    ("null rule", {"rules": [None]}, "spec.rules[0]"),
    ("empty from", _rule(**{"from": []}), "spec.rules[0].from"),
    ("from without source", _rule(**{"from": [{}]}), "spec.rules[0].from[0].source"),
    ("empty source", _rule(**{"from": [{"source": {}}]}), "spec.rules[0].from[0].source"),
    ("empty to", _rule(to=[]), "spec.rules[0].to"),
    ("empty operation", _rule(to=[{"operation": {}}]), "spec.rules[0].to[0].operation"),
    (
        "empty value",
        _rule(**{"from": [{"source": {"principals": [""]}}]}),
        "spec.rules[0].from[0].source.principals[0]",
    ),
    (
        "serviceAccounts with namespaces",
        _rule(**{"from": [{"source": {"serviceAccounts": ["a"], "namespaces": ["ns1"]}}]}),
        "spec.rules[0].from[0].source",
    ),
    (
        "bad serviceAccount",
        _rule(**{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}),
        "spec.rules[0].from[0].source.serviceAccounts[0]",
    ),
    (
        "bad CIDR",
        _rule(**{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}),
        "spec.rules[0].from[0].source.ipBlocks[0]",
    ),
    (
        "bad IP",
        _rule(**{"from": [{"source": {"notIpBlocks": ["10.0.0"]}}]}),
        "spec.rules[0].from[0].source.notIpBlocks[0]",
    ),
    ("port name", _rule(to=[{"operation": {"ports": ["http"]}}]), "spec.rules[0].to[0].operation.ports[0]"),
    ("port too big", _rule(to=[{"operation": {"notPorts": ["70000"]}}]), "spec.rules[0].to[0].operation.notPorts[0]"),
    ("port not a string", _rule(to=[{"operation": {"ports": [80]}}]), "spec.rules[0].to[0].operation.ports[0]"),
    (
        "unsupported path template",
        _rule(to=[{"operation": {"paths": ["/{name}/{*}"]}}]),
        "spec.rules[0].to[0].operation.paths[0]",
    ),
    ("unknown when key", _rule(when=[{"key": "source.user", "values": ["x"]}]), "spec.rules[0].when[0].key"),
    ("replaced when key", _rule(when=[{"key": "destination.namespace", "values": ["x"]}]), "spec.rules[0].when[0].key"),
    (
        "experimental key",
        _rule(when=[{"key": "experimental.envoy.filters.a[b]", "values": ["x"]}]),
        "spec.rules[0].when[0].key",
    ),
    ("header key without name", _rule(when=[{"key": "request.headers", "values": ["x"]}]), "spec.rules[0].when[0].key"),
    ("when without values", _rule(when=[{"key": "source.ip"}]), "spec.rules[0].when[0]"),
    ("bad when IP", _rule(when=[{"key": "destination.ip", "values": ["x"]}]), "spec.rules[0].when[0].values[0]"),
    (
        "bad when port",
        _rule(when=[{"key": "destination.port", "notValues": ["-1"]}]),
        "spec.rules[0].when[0].notValues[0]",
    ),
    ("unknown targetRef kind", {"targetRefs": [{"kind": "Deployment", "name": "b"}]}, "spec.targetRefs[0]"),
    (
        "cross-namespace targetRef",
        {"targetRefs": [{"kind": "Service", "group": "", "name": "b", "namespace": "ns2"}]},
        "spec.targetRefs[0].namespace",
    ),
    ("targetRef without name", {"targetRefs": [{"kind": "Service", "group": ""}]}, "spec.targetRefs[0].name"),
    ("unknown spec field", {"rule": [{}]}, "spec.rule"),
    (
        "unknown source field",
        _rule(**{"from": [{"source": {"principal": ["a"]}}]}),
        "spec.rules[0].from[0].source.principal",
    ),
]


@pytest.mark.parametrize(("spec", "field"), [(s, f) for _, s, f in REJECTED], ids=[n for n, _, _ in REJECTED])
def test_rejects_with_field_path(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as err:
        validate_authorization_policy(world.policy("bad", spec))
    assert err.value.field == field


def test_rejects_other_api_groups() -> None:
    doc = world.policy("x", {})
    doc["apiVersion"] = "security.istio.io/v1alpha1"
    with pytest.raises(ManifestError) as err:
        validate_authorization_policy(doc)
    assert err.value.field == "apiVersion"


def test_rejected_policy_is_reported_by_the_loader() -> None:
    snap = world.snapshot([world.policy("bad", {"action": "DENY"})])
    assert [(p.kind, p.name, p.field) for p in snap.problems] == [("AuthorizationPolicy", "bad", "spec.rules")]
    assert snap.objects("AuthorizationPolicy") == []
