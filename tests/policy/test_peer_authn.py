"""PeerAuthentication as istiod converts it for ambient, evaluated by the ZtunnelAuthorizer.

Sources: ``IS:architecture/ambient/peer-authentication.md`` (the STRICT + port 9090 PERMISSIVE
example), ``IS:pilot/pkg/serviceregistry/ambient/authorization.go`` (``convertedSelectorPeer
Authentications``, ``convertPeerAuthentication``, ``staticStrictPolicyName``),
``IS:pilot/pkg/model/authentication.go`` (``converted_peer_authentication_`` prefix),
``IS:pkg/config/validation/validation.go`` ``ValidatePeerAuthentication``. The destination is
``ns1/b-0`` (app=b) of :mod:`tests.policy.world`; "plaintext" is a connection with no identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from waypoint.errors import ManifestError
from waypoint.policy.authz import ZtunnelAuthorizer
from waypoint.policy.authz.peer_authn import Mode, PeerAuthentication, parse_peer_authentication
from waypoint.policy.authz.peer_authn_l4 import Levels, convert

from .world import conn, pod, policy, snapshot

STATIC = "istio-system/istio_converted_static_strict"
CONVERTED_B = "ns1/converted_peer_authentication_b"
PLAIN_PORT, OTHER_PORT = 18080, 19090


def pa(
    name: str, mode: str | None = None, ns: str = "ns1", selector: Mapping[str, str] | None = None,
    ports: Mapping[int, str] | None = None, created: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if ports is not None:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    md: dict[str, Any] = {"name": name, "namespace": ns}
    if created is not None:
        md["creationTimestamp"] = created
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": md, "spec": spec}


def mesh_wide(mode: str) -> dict[str, Any]:
    return pa("default", mode, ns="istio-system")


def workload(mode: str | None, ports: Mapping[int, str] | None = None, name: str = "b") -> dict[str, Any]:
    return pa(name, mode, selector={"app": "b"}, ports=ports)


def authz(*docs: Mapping[str, Any]) -> tuple[ZtunnelAuthorizer, Any]:
    snap = snapshot(docs)
    return ZtunnelAuthorizer.from_snapshot(snap), pod(snap)


def plaintext_allowed(docs: tuple[Mapping[str, Any], ...], port: int = PLAIN_PORT) -> bool:
    az, b = authz(*docs)
    return az.check(b, conn(principal=None, port=port)).allowed


# (id, policies, plaintext allowed on 18080, on 19090, policy names ztunnel holds for b-0)
CASES: list[tuple[str, tuple[dict[str, Any], ...], bool, bool, list[str]]] = [
    ("none", (), True, True, []),
    ("mesh-strict", (mesh_wide("STRICT"),), False, False, [STATIC]),
    ("mesh-permissive", (mesh_wide("PERMISSIVE"),), True, True, []),
    ("mesh-unset-is-permissive", (mesh_wide("UNSET"),), True, True, []),
    ("namespace-strict", (pa("ns", "STRICT"),), False, False, [STATIC]),
    ("namespace-permissive-over-mesh-strict", (mesh_wide("STRICT"), pa("ns", "PERMISSIVE")), True, True, []),
    ("namespace-unset-inherits-mesh-strict", (mesh_wide("STRICT"), pa("ns", None)), False, False, [STATIC]),
    ("namespace-strict-over-mesh-permissive", (mesh_wide("PERMISSIVE"), pa("ns", "STRICT")), False, False, [STATIC]),
    ("workload-strict-over-namespace-permissive", (pa("ns", "PERMISSIVE"), workload("STRICT")), False, False,
     [STATIC]),
    ("workload-permissive-over-namespace-strict", (pa("ns", "STRICT"), workload("PERMISSIVE")), True, True, []),
    ("workload-unset-inherits", (pa("ns", "STRICT"), workload(None)), False, False, [STATIC]),
    ("other-namespace-never-applies", (pa("ns", "STRICT", ns="ns2"),), True, True, []),
    ("selector-not-matching", (pa("w", "STRICT", selector={"app": "c"}),), True, True, []),
    ("root-namespace-selector-ignored", (pa("w", "STRICT", ns="istio-system", selector={"app": "b"}),), True, True,
     []),
    # portLevelMtls: the architecture doc's example and its mirror images
    ("strict-with-port-permissive", (workload("STRICT", {OTHER_PORT: "PERMISSIVE"}),), False, True,
     [CONVERTED_B]),
    ("strict-with-port-disable", (workload("STRICT", {OTHER_PORT: "DISABLE"}),), False, True,
     [CONVERTED_B]),
    ("strict-with-port-strict-is-plain-strict", (workload("STRICT", {OTHER_PORT: "STRICT"}),), False, False,
     [STATIC]),
    ("permissive-with-port-strict", (workload("PERMISSIVE", {OTHER_PORT: "STRICT"}),), True, False,
     [CONVERTED_B]),
    ("disable-with-port-strict", (workload("DISABLE", {OTHER_PORT: "STRICT"}),), True, False,
     [CONVERTED_B]),
    ("unset-port-permissive-under-mesh-strict-merges",
     (mesh_wide("STRICT"), workload(None, {OTHER_PORT: "PERMISSIVE"})), False, True, [CONVERTED_B]),
    ("unset-port-strict-under-namespace-permissive",
     (pa("ns", "PERMISSIVE"), workload(None, {OTHER_PORT: "STRICT"})), True, False, [CONVERTED_B]),
    ("unset-port-strict-no-parent", (workload(None, {OTHER_PORT: "STRICT"}),), True, False,
     [CONVERTED_B]),
    # istiod counts only PERMISSIVE ports when the workload mode is UNSET under a STRICT parent
    ("unset-port-disable-under-mesh-strict-not-exempt",
     (mesh_wide("STRICT"), workload(None, {OTHER_PORT: "DISABLE"})), False, False, [STATIC]),
    # DISABLE cannot turn off HBONE's mTLS; for plaintext current istiod treats it as "not STRICT"
    ("namespace-disable-over-mesh-strict", (mesh_wide("STRICT"), pa("ns", "DISABLE")), True, True, []),
    ("workload-disable-over-namespace-strict", (pa("ns", "STRICT"), workload("DISABLE")), True, True, []),
    # the two departures from istiod's code (peer_authn_l4 docstring): both would fail open there
    ("departure-a-permissive-port-strict-under-mesh-strict",
     (mesh_wide("STRICT"), workload("PERMISSIVE", {OTHER_PORT: "STRICT"})), True, False,
     [CONVERTED_B]),
    ("departure-b-namespace-unset-under-mesh-strict",
     (mesh_wide("STRICT"), pa("ns", None), workload(None, {OTHER_PORT: "PERMISSIVE"})), False, True,
     [CONVERTED_B]),
]


@pytest.mark.parametrize(("docs", "on_plain", "on_other", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_levels_precedence_and_ports(docs: tuple[dict[str, Any], ...], on_plain: bool, on_other: bool,
                                     names: list[str]) -> None:
    az, b = authz(*docs)
    assert az.check(b, conn(principal=None, port=PLAIN_PORT)).allowed is on_plain
    assert az.check(b, conn(principal=None, port=OTHER_PORT)).allowed is on_other
    assert az.policy_names(b) == names
    for port in (PLAIN_PORT, OTHER_PORT):  # mTLS (HBONE) always has a principal: PeerAuthentication never denies it
        assert az.check(b, conn(port=port)).allowed


def test_deny_names_the_converted_policy_and_the_peer_authentication() -> None:
    az, b = authz(mesh_wide("STRICT"))
    decision = az.check(b, conn(principal=None))
    assert not decision.allowed and decision.policy == STATIC
    assert "PeerAuthentication istio-system/default: STRICT" in decision.reason
    az, b = authz(workload("STRICT", {OTHER_PORT: "PERMISSIVE"}, name="finance"))
    decision = az.check(b, conn(principal=None))
    assert decision.policy == "ns1/converted_peer_authentication_finance"
    assert "PeerAuthentication ns1/finance" in decision.reason


def test_oldest_policy_at_a_level_wins() -> None:
    """``getOldestPeerAuthn`` / ``CreationTimestamp.Before``: the older one decides."""
    y2024, y2025 = "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"
    assert not plaintext_allowed((pa("a", "STRICT", created=y2024), pa("z", "PERMISSIVE", created=y2025)))
    assert plaintext_allowed((pa("a", "STRICT", created=y2025), pa("z", "PERMISSIVE", created=y2024)))
    assert not plaintext_allowed((workload("STRICT", name="a"), workload("PERMISSIVE", name="z")))  # ties: by name


def test_authorization_policies_keep_their_behaviour_beside_peer_authentication() -> None:
    allow_ns1 = policy("allow-ns1", {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ns1"]}}]}]})
    az, b = authz(allow_ns1, pa("ns", "STRICT"))
    assert az.policy_names(b) == ["ns1/allow-ns1", STATIC]
    assert az.check(b, conn()).allowed  # ns1/a over mTLS
    assert az.check(b, conn("cluster.local/ns/ns2/sa/a")).policy == ""  # no ALLOW matched
    assert az.check(b, conn(principal=None)).policy == STATIC  # the DENY decides first


def test_architecture_doc_example_converts_to_its_groups() -> None:
    """``IS:architecture/ambient/peer-authentication.md``: STRICT + 9090 PERMISSIVE becomes one DENY
    whose single group ANDs ``notPrincipals: [presence]`` and ``notDestinationPorts: [9090]``."""
    wl = PeerAuthentication("ns1", "strict-and-permissive-mtls", Mode.STRICT, {"app": "a"}, ((9090, Mode.PERMISSIVE),))
    converted = convert(wl, Levels(workload=wl), "istio-system")
    assert converted is not None
    assert converted.policy.key == "ns1/converted_peer_authentication_strict-and-permissive-mtls"
    ((index, group),) = converted.rules
    assert index == 0 and len(group) == 2  # two rules, ANDed
    (first,), (second,) = group
    assert [m.kind for m in first.not_principals] == ["presence"] and second.not_destination_ports == {9090}
    strict_ports = ((80, Mode.STRICT), (81, Mode.STRICT))
    per_port = convert(PeerAuthentication("ns1", "p", Mode.PERMISSIVE, {"app": "a"}, strict_ports), Levels(), "root")
    assert per_port is not None and len(per_port.rules) == 2  # one ORed group per STRICT port
    assert [g[0][0].destination_ports for _, g in per_port.rules] == [{80}, {81}]


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"portLevelMtls": {80: {"mode": "STRICT"}}}, "spec.portLevelMtls", "requires a workload selector"),
    ({"selector": {"matchLabels": {}}, "portLevelMtls": {80: {"mode": "STRICT"}}}, "spec.portLevelMtls",
     "cannot have port level mTLS"),
    ({"selector": {"matchLabels": {"app": "b"}}, "portLevelMtls": {}}, "spec.portLevelMtls", "at least one element"),
    ({"selector": {"matchLabels": {"app": "b"}}, "portLevelMtls": {0: {"mode": "STRICT"}}}, "spec.portLevelMtls[0]",
     "1..65535"),
    ({"selector": {"matchLabels": {"app": "b"}}, "portLevelMtls": {"70000": {"mode": "STRICT"}}},
     "spec.portLevelMtls[70000]", "1..65535"),
    ({"selector": {"matchLabels": {"app": "b"}}, "portLevelMtls": {80: None}}, "spec.portLevelMtls[80]", "null"),
    ({"selector": {"matchLabels": {"app": "b"}}, "portLevelMtls": {80: {"mode": "MUTUAL"}}},
     "spec.portLevelMtls[80].mode", "must be one of"),
    ({"mtls": {"mode": "strict"}}, "spec.mtls.mode", "must be one of"),
    ({"mtl": {"mode": "STRICT"}}, "spec.mtl", "unknown field"),
    ({"mtls": {"mode": "STRICT", "extra": 1}}, "spec.mtls.extra", "unknown field"),
    ({"selector": {"labels": {"app": "b"}}}, "spec.selector.labels", "unknown field"),
])
def test_validation_names_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    doc = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "x", "namespace": "ns1"}, "spec": spec}
    with pytest.raises(ManifestError) as err:
        parse_peer_authentication(doc, "ns1")
    assert err.value.field == field and message in err.value.message


def test_parse_keeps_modes_and_sorts_ports() -> None:
    doc = pa("b", "STRICT", selector={"app": "b"}, ports={9090: "PERMISSIVE", 80: "DISABLE"})
    doc["spec"]["portLevelMtls"]["8080"] = {"mode": "STRICT"}  # JSON spells keys as strings
    parsed = parse_peer_authentication(doc, "ns1", "2024-01-01T00:00:00Z")
    assert parsed.mode is Mode.STRICT and parsed.created == "2024-01-01T00:00:00Z"
    assert parsed.port_level == ((80, Mode.DISABLE), (8080, Mode.STRICT), (9090, Mode.PERMISSIVE))
    assert parse_peer_authentication(pa("n"), "ns1").mode is Mode.UNSET  # no mtls: inherit
