"""RequestAuthentication: validation (``IS:pkg/config/validation/validation.go`` ``validateJwtRule``),
attachment at a waypoint (``targetRefs`` as AuthorizationPolicy), and the AuthorizationPolicy fields that
read a verified token (``IS:pilot/pkg/security/authz/model/generator.go`` ``requestPrincipalGenerator``,
``requestClaimGenerator``; the API's "Authorization Policy Conditions" reference).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.policy import world
from tests.policy.test_fields import _source, _when, at_waypoint
from tests.policy.test_jwt import RSA, jwk, jwks_text
from waypoint.errors import ManifestError
from waypoint.mesh.model import Waypoint
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.policy.request_authn import (
    DEFAULT_SPACE_DELIMITED,
    parse_request_authentication,
    rules_for_waypoint,
    validate_request_authentication,
)

ISS = "https://issuer.example"


def ra(spec: dict[str, Any], name: str = "jwt", ns: str = "ns1") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_parse_full_rule() -> None:
    doc = ra({"targetRefs": [{"kind": "Service", "group": "", "name": "b"}], "jwtRules": [{
        "issuer": ISS, "audiences": ["a"], "jwks": jwks_text(jwk(RSA)),
        "fromHeaders": [{"name": "X-Token", "prefix": "Bearer "}], "fromParams": ["t"], "fromCookies": ["c"],
        "outputPayloadToHeader": "x-payload", "outputClaimToHeaders": [{"header": "X-Sub", "claim": "sub"}],
        "forwardOriginalToken": True, "timeout": "500ms", "spaceDelimitedClaims": ["roles"],
    }]})
    p = parse_request_authentication(doc, "ns1")
    rule = p.jwt_rules[0]
    assert p.key == "ns1/jwt" and p.target_refs[0].kind == "Service"
    assert rule.from_headers == (("x-token", "Bearer "),) and rule.output_claim_to_headers == (("x-sub", "sub"),)
    assert rule.forward_original_token and rule.timeout_s == 0.5 and rule.audiences == ("a",)
    assert rule.space_delimited_claims == tuple(sorted({"roles", *DEFAULT_SPACE_DELIMITED}))


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no issuer nor jwksUri", {"jwtRules": [{}]}, "spec.jwtRules[0].issuer"),
    ("empty audience", {"jwtRules": [{"issuer": ISS, "audiences": [""]}]}, "spec.jwtRules[0].audiences[0]"),
    ("bad jwksUri", {"jwtRules": [{"issuer": ISS, "jwksUri": "ftp://x/keys"}]}, "spec.jwtRules[0].jwksUri"),
    ("bad jwks", {"jwtRules": [{"issuer": ISS, "jwks": "{}"}]}, "spec.jwtRules[0].jwks"),
    ("empty header name", {"jwtRules": [{"issuer": ISS, "fromHeaders": [{"prefix": "x"}]}]},
     "spec.jwtRules[0].fromHeaders[0].name"),
    ("empty param", {"jwtRules": [{"issuer": ISS, "fromParams": [""]}]}, "spec.jwtRules[0].fromParams[0]"),
    ("claim header without claim", {"jwtRules": [{"issuer": ISS, "outputClaimToHeaders": [{"header": "x"}]}]},
     "spec.jwtRules[0].outputClaimToHeaders[0]"),
    ("bad header name", {"jwtRules": [{"issuer": ISS, "outputPayloadToHeader": "a b"}]},
     "spec.jwtRules[0].outputPayloadToHeader"),
    ("bad timeout", {"jwtRules": [{"issuer": ISS, "timeout": "soon"}]}, "spec.jwtRules[0].timeout"),
    ("unknown field", {"jwtRules": [{"issuer": ISS, "jwksURL": "x"}]}, "spec.jwtRules[0].jwksURL"),
    ("selector and targetRefs", {"selector": {"matchLabels": {"a": "b"}},
                                 "targetRefs": [{"kind": "Service", "group": "", "name": "b"}]}, "spec"),
    ("bad target kind", {"targetRefs": [{"kind": "Pod", "group": "", "name": "b"}]}, "spec.targetRefs[0]"),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as e:
        validate_request_authentication(ra(spec))
    assert e.value.field == field


def _waypoint_rules(*docs: dict[str, Any]) -> tuple[Any, Waypoint]:
    from waypoint.policy.request_authn import load_request_authentications

    reg = world.registry()
    reg.register_kind("RequestAuthentication", validate_request_authentication)
    snap = snapshot_from_docs([*world.world_docs(), *docs], registry=reg)
    assert not snap.problems
    wp = world.waypoint(snap)
    return rules_for_waypoint(load_request_authentications(snap), wp, "istio-system"), wp


def test_attachment_gateway_class_service_and_selector() -> None:
    gw = ra({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
             "jwtRules": [{"issuer": "z-gw"}]}, "gw")
    svc = ra({"targetRefs": [{"group": "", "kind": "Service", "name": "b"}], "jwtRules": [{"issuer": "a-svc"}]}, "svc")
    cls = ra({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}],
              "jwtRules": [{"issuer": "m-class"}]}, "cls", ns="istio-system")
    sel = ra({"selector": {"matchLabels": {"app": "b"}}, "jwtRules": [{"issuer": "sel"}]}, "sel")
    other_gw = ra({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "other"}],
                   "jwtRules": [{"issuer": "other"}]}, "other")
    rules, _ = _waypoint_rules(gw, svc, cls, sel, other_gw)
    assert [r.issuer for r in rules.gateway] == ["m-class", "z-gw"]  # sorted by issuer (policy_applier.go)
    assert [r.issuer for r in rules.by_service[("ns1", "b")]] == ["a-svc", "m-class", "z-gw"]


# ---- AuthorizationPolicy fields reading the verified token ----

CLAIMS = {"iss": ISS, "sub": "alice", "aud": ["web", "api"], "azp": "spa", "groups": ["dev", "ops"],
          "scope": ["read", "write"], "org": {"team": "core"}, "n": 3}
ISS_SUB = f"{ISS}/alice"

JWT_CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, bool]] = [
    ("requestPrincipals exact", _source(requestPrincipals=[ISS_SUB]), CLAIMS, True),
    ("requestPrincipals other sub", _source(requestPrincipals=[f"{ISS}/bob"]), CLAIMS, False),
    ("requestPrincipals *", _source(requestPrincipals=["*"]), CLAIMS, True),
    ("requestPrincipals * without token", _source(requestPrincipals=["*"]), None, False),
    ("requestPrincipals iss/*", _source(requestPrincipals=[f"{ISS}/*"]), CLAIMS, True),
    ("requestPrincipals iss/prefix*", _source(requestPrincipals=[f"{ISS}/al*"]), CLAIMS, True),
    ("requestPrincipals */sub", _source(requestPrincipals=["*/alice"]), CLAIMS, True),
    ("requestPrincipals *suffix/sub", _source(requestPrincipals=["*.example/alice"]), CLAIMS, True),
    ("requestPrincipals *suffix no slash = sub suffix", _source(requestPrincipals=["*ice"]), CLAIMS, True),
    ("requestPrincipals prefix* no slash = iss prefix", _source(requestPrincipals=["acc*"]),
     {**CLAIMS, "iss": "accounts"}, True),
    ("requestPrincipals prefix* splits at the last slash", _source(requestPrincipals=["https://iss*"]), CLAIMS, False),
    ("notRequestPrincipals * with token", _source(notRequestPrincipals=["*"]), CLAIMS, False),
    ("notRequestPrincipals * without token", _source(notRequestPrincipals=["*"]), None, True),
    ("when request.auth.principal", _when("request.auth.principal", [ISS_SUB]), CLAIMS, True),
    ("when request.auth.audiences list", _when("request.auth.audiences", ["api"]), CLAIMS, True),
    ("when request.auth.audiences string", _when("request.auth.audiences", ["web"]), {**CLAIMS, "aud": "web"}, True),
    ("when request.auth.audiences miss", _when("request.auth.audiences", ["x"]), CLAIMS, False),
    ("when request.auth.presenter", _when("request.auth.presenter", ["spa"]), CLAIMS, True),
    ("when claims list element", _when("request.auth.claims[groups]", ["ops"]), CLAIMS, True),
    ("when claims prefix", _when("request.auth.claims[groups]", ["de*"]), CLAIMS, True),
    ("when claims scope (space-delimited)", _when("request.auth.claims[scope]", ["write"]), CLAIMS, True),
    ("when nested claims", _when("request.auth.claims[org][team]", ["core"]), CLAIMS, True),
    ("when nested claims miss", _when("request.auth.claims[org][team]", ["x"]), CLAIMS, False),
    ("when claim not a string", _when("request.auth.claims[n]", ["3"]), CLAIMS, False),
    ("when claims notValues", _when("request.auth.claims[groups]", None, ["ops"]), CLAIMS, False),
    ("when claims notValues without token", _when("request.auth.claims[groups]", None, ["ops"]), None, True),
]


@pytest.mark.parametrize(("rule", "claims", "allowed"), [c[1:] for c in JWT_CASES], ids=[c[0] for c in JWT_CASES])
def test_jwt_fields_at_waypoint(rule: dict[str, Any], claims: dict[str, Any] | None, allowed: bool) -> None:
    assert at_waypoint(rule, replace(world.request(), jwt_claims=claims)) is allowed


def test_jwt_fields_skip_the_rule_on_tcp() -> None:
    """Opaque TCP has no token: an ALLOW rule with requestPrincipals is dropped (checkError, HTTP only)."""
    from waypoint.policy.authz import WaypointAuthorizer

    spec = {"targetRefs": [{"kind": "Service", "group": "", "name": "b"}],
            "rules": [_source(requestPrincipals=["*"])]}
    snap = world.snapshot([world.policy("r", spec)])
    authz = WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap))
    assert not authz.check_connection(world.service(snap), world.conn(destination_ip=world.SERVICE_VIP)).allowed
