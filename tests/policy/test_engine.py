"""Decision semantics of the two authorizers: actions, dry-run, scope, ztunnel's L7 conversion.

Sources: the API reference (``security/v1beta1/authorization_policy.proto``), ``ZT:src/rbac.rs``,
``IS:pilot/pkg/serviceregistry/ambient/authorization.go`` (facts §3.2),
``IS:pilot/pkg/model/policyattachment.go``, ``IS:pilot/pkg/security/authz/model/model.go``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.policy import world
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.policy.attributes import ALLOW, ConnectionFacts, Decision, RequestFacts
from waypoint.policy.authz import WaypointAuthorizer, ZtunnelAuthorizer

SVC_B: dict[str, Any] = {"targetRefs": [{"kind": "Service", "group": "", "name": "b"}]}
WAYPOINT_REF: dict[str, Any] = {
    "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
}
ALL_WAYPOINTS: dict[str, Any] = {
    "targetRefs": [{"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}]
}


def ztunnel(*policies: dict[str, Any], facts: ConnectionFacts | None = None) -> Decision:
    snap = world.snapshot(policies)
    assert not snap.problems
    return ZtunnelAuthorizer.from_snapshot(snap).check(world.pod(snap), facts or world.conn())


def waypoint_http(*policies: dict[str, Any], req: RequestFacts | None = None, service: bool = True) -> Decision:
    snap = world.snapshot(policies)
    assert not snap.problems
    authz = WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap))
    return authz.check_request(world.service(snap) if service else None, req or world.request())


def waypoint_tcp(*policies: dict[str, Any], facts: ConnectionFacts | None = None) -> Decision:
    snap = world.snapshot(policies)
    assert not snap.problems
    authz = WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap))
    return authz.check_connection(world.service(snap), facts or world.conn(destination_ip=world.SERVICE_VIP))


def p(name: str, ns: str = "ns1", annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return world.policy(name, spec, ns, annotations)


# --- actions (API reference "Authorization Policy": CUSTOM, DENY, ALLOW; AUDIT never decides) ---


def test_no_policy_returns_the_shared_allow() -> None:
    assert ztunnel() is ALLOW
    assert waypoint_http() is ALLOW
    assert waypoint_tcp() is ALLOW


def test_custom_fails_closed_at_the_waypoint_when_its_rules_match() -> None:
    custom = p(
        "ext",
        action="CUSTOM",
        provider={"name": "opa.local"},
        rules=[{"to": [{"operation": {"paths": ["/admin*"]}}]}],
        **SVC_B,
    )
    denied = waypoint_http(custom, req=world.request(path="/admin/x"))
    assert denied == Decision(False, policy="ns1/ext", reason="CUSTOM provider opa.local not available", rule=0)
    assert waypoint_http(custom, req=world.request(path="/public")).allowed  # not sent to the provider


def test_custom_and_audit_are_not_sent_to_ztunnel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="waypoint.policy.authz")
    custom = p("ext", action="CUSTOM", provider={"name": "opa"}, rules=[{}])
    audit = p("audit", action="AUDIT", rules=[{}])
    assert ztunnel(custom, audit) is ALLOW
    assert "ztunnel does not support the CUSTOM action" in caplog.text
    assert "ztunnel does not support the AUDIT action" in caplog.text


def test_audit_never_changes_the_decision() -> None:
    audit = p("audit", action="AUDIT", rules=[{}], **SVC_B)
    assert waypoint_http(audit).allowed
    allow_post = p("allow-post", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}], **SVC_B)
    assert not waypoint_http(audit, allow_post).allowed  # AUDIT is not an ALLOW


def test_deny_wins_over_allow_and_names_the_policy() -> None:
    allow_all = p("allow-all", rules=[{}])
    deny_all = p("deny-all", action="DENY", rules=[{}])
    assert ztunnel(allow_all, deny_all) == Decision(
        False, policy="ns1/deny-all", reason="denied by DENY policy ns1/deny-all", rule=0
    )
    assert ztunnel(allow_all) == Decision(
        True, policy="ns1/allow-all", reason="allowed by ALLOW policy ns1/allow-all", rule=0
    )


def test_the_decision_names_the_rule_that_matched_by_its_index_in_the_policy() -> None:
    """Envoy reports ``ns[NS]-policy[NAME]-rule[I]`` with I the rule's index in the policy
    (``IS:pilot/pkg/security/authz/builder/builder.go``); a rule istiod drops keeps its number."""
    deny = p("deny", action="DENY", rules=[{"to": [{"operation": {"ports": ["1"]}}]},
                                           {"to": [{"operation": {"methods": ["GET"]}}]}], **SVC_B)
    assert waypoint_http(deny, req=world.request(method="GET")).rule == 1
    allow = p("allow", rules=[{"to": [{"operation": {"paths": ["/x"]}}]}, {}])  # rule 0 has HTTP fields
    decision = ztunnel(allow)  # ztunnel drops rule 0 (HTTP fields in ALLOW); rule 1 still is rule 1
    assert decision.allowed and decision.rule == 1


def test_allow_without_rules_allows_nothing_and_empty_rule_allows_all() -> None:
    assert not ztunnel(p("nothing")).allowed
    assert not waypoint_http(p("nothing", **SVC_B)).allowed
    assert ztunnel(p("all", rules=[{}])).allowed
    assert waypoint_tcp(p("all", rules=[{}], **SVC_B)).allowed


def test_allow_policies_present_and_none_matches_denies_without_a_policy_name() -> None:
    d = ztunnel(p("ns2-only", rules=[{"from": [{"source": {"namespaces": ["ns2"]}}]}]))
    assert not d.allowed and d.policy == ""


def test_deny_without_rules_never_matches_even_past_the_validator(caplog: pytest.LogCaptureFixture) -> None:
    # A registry without the validator keeps the object; the engine refuses it the same way.
    docs = [*world.world_docs(), p("deny-none", action="DENY")]
    snap = snapshot_from_docs(docs)
    assert ZtunnelAuthorizer.from_snapshot(snap).check(world.pod(snap), world.conn()) is ALLOW
    assert "ns1/deny-none ignored: spec.rules" in caplog.text


def test_dry_run_is_evaluated_and_never_enforced() -> None:
    dry = {"istio.io/dry-run": "true"}
    deny = p("dry-deny", annotations=dry, action="DENY", rules=[{}], **SVC_B)
    d = waypoint_http(deny)
    assert d.allowed and d.dry_run_denied_by == ("ns1/dry-deny",)
    allow_ns2 = p("dry-allow", annotations=dry, rules=[{"from": [{"source": {"namespaces": ["ns2"]}}]}])
    d = ztunnel(allow_ns2)
    assert d.allowed and d.dry_run_denied_by == ("ns1/dry-allow",)
    assert ztunnel(allow_ns2, facts=world.conn("cluster.local/ns/ns2/sa/a")).dry_run_denied_by == ()


# --- scope (policyattachment.go; authorization.go ListAuthorizationPolicies) ---


def test_scope_at_ztunnel() -> None:
    nothing: dict[str, Any] = {}
    assert not ztunnel(p("mesh", ns="istio-system", **nothing)).allowed  # root namespace: mesh-wide
    assert not ztunnel(p("ns-wide", **nothing)).allowed
    assert not ztunnel(p("sel", selector={"matchLabels": {"app": "b"}})).allowed
    assert ztunnel(p("other-sel", selector={"matchLabels": {"app": "c"}})) is ALLOW
    assert ztunnel(p("other-ns", ns="ns2")) is ALLOW
    assert ztunnel(p("target", **SVC_B)) is ALLOW  # targetRefs are never sent to ztunnel


def test_root_namespace_can_be_changed() -> None:
    snap = world.snapshot([p("mesh", ns="ns2")])
    authz = ZtunnelAuthorizer.from_snapshot(snap, root_namespace="ns2")
    assert not authz.check(world.pod(snap), world.conn()).allowed


def test_scope_at_the_waypoint_is_targetrefs_only() -> None:
    # "waypoints never use selector": selector, namespace-wide and root policies do not attach.
    assert waypoint_http(p("ns-wide"), p("mesh", ns="istio-system"), p("sel", selector={})) is ALLOW
    assert not waypoint_http(p("svc", **SVC_B)).allowed
    assert not waypoint_http(p("gw", **WAYPOINT_REF)).allowed
    assert not waypoint_http(p("class", ns="istio-system", **ALL_WAYPOINTS)).allowed
    assert waypoint_http(p("class", ns="ns1", **ALL_WAYPOINTS)) is ALLOW  # GatewayClass only from the root
    assert waypoint_http(p("gw-other-ns", ns="ns2", **WAYPOINT_REF)) is ALLOW
    other: dict[str, Any] = {"targetRefs": [{"kind": "Service", "group": "", "name": "c"}]}
    assert waypoint_http(p("svc-c", **other)) is ALLOW


def test_request_without_a_service_sees_only_waypoint_level_policies() -> None:
    assert waypoint_http(p("svc", **SVC_B), service=False) is ALLOW
    assert not waypoint_http(p("gw", **WAYPOINT_REF), service=False).allowed


def test_policy_names_for_the_config_dump() -> None:
    snap = world.snapshot(
        [p("a", rules=[{}]), p("svc", **SVC_B), p("mesh", ns="istio-system", action="DENY", rules=[{}])]
    )
    assert ZtunnelAuthorizer.from_snapshot(snap).policy_names(world.pod(snap)) == ["istio-system/mesh", "ns1/a"]
    assert WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap)).policy_names(world.service(snap)) == ["ns1/svc"]


def test_a_workload_not_in_the_snapshot_is_scoped_by_its_labels() -> None:
    snap = world.snapshot([p("sel", selector={"matchLabels": {"app": "x"}})])
    authz = ZtunnelAuthorizer.from_snapshot(snap)
    from dataclasses import replace

    stranger = replace(world.pod(snap), uid="other", labels={"app": "x"})
    assert not authz.check(stranger, world.conn()).allowed
    relabelled = replace(world.pod(snap), labels={"app": "x"})  # same uid, new labels
    assert not authz.check(relabelled, world.conn()).allowed
    assert authz.check(world.pod(snap), world.conn()) is ALLOW


# --- ztunnel's L7 conversion (authorization.go handleRule) and Envoy's forTCP (model.go) ---

PORT_19090 = {"to": [{"operation": {"ports": ["19090"]}}]}
GET_ONLY = {"to": [{"operation": {"methods": ["GET"]}}]}


def test_ztunnel_drops_allow_rules_with_http_fields() -> None:
    allow = p("allow", rules=[GET_ONLY, PORT_19090])
    assert ztunnel(allow, facts=world.conn(port=19090)).allowed
    assert not ztunnel(allow, facts=world.conn(port=18080)).allowed  # the GET rule is gone


def test_ztunnel_enforces_deny_without_its_http_parts() -> None:
    mixed = p("deny", action="DENY", rules=[{"to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]}])
    assert not ztunnel(mixed, facts=world.conn(port=8080)).allowed
    assert ztunnel(mixed, facts=world.conn(port=18080)).allowed
    http_only = p("deny", action="DENY", rules=[GET_ONLY])
    assert ztunnel(http_only).allowed  # no L4 rule left: no effect
    header_when = p(
        "deny", action="DENY", rules=[{**PORT_19090, "when": [{"key": "request.headers[x]", "values": ["1"]}]}]
    )
    assert ztunnel(header_when, facts=world.conn(port=19090)).allowed  # empty match clause never matches


def test_waypoint_tcp_follows_envoy_for_tcp() -> None:
    allow = p("allow", rules=[GET_ONLY, PORT_19090], **SVC_B)
    assert waypoint_tcp(allow, facts=world.conn(port=19090)).allowed
    assert not waypoint_tcp(allow, facts=world.conn(port=18080)).allowed
    # DENY: "missing attributes are treated as matches" -> an HTTP-only DENY denies all TCP.
    assert not waypoint_tcp(p("deny", action="DENY", rules=[GET_ONLY], **SVC_B)).allowed
    assert waypoint_http(p("deny", action="DENY", rules=[GET_ONLY], **SVC_B), req=world.request(method="POST")).allowed


def test_decisions_are_built_at_compile_time() -> None:
    snap = world.snapshot([p("deny", action="DENY", rules=[{}]), p("allow", rules=[{}])])
    authz = ZtunnelAuthorizer.from_snapshot(snap)
    first = authz.check(world.pod(snap), world.conn())
    assert authz.check(world.pod(snap), world.conn(source_ip="10.0.2.10")) is first
