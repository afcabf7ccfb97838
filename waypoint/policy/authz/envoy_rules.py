"""The form a waypoint evaluates: istiod's Envoy RBAC generation, for HTTP and for TCP.

``IS:pilot/pkg/security/authz/model/model.go`` ``New``/``Generate``: each rule becomes principals
(one per ``from`` entry, else one) and permissions (one per ``to`` entry, else one); every ``when``
condition is appended to each of them; a rule matches when one principal and one permission hold.
Inside one, each key is ANDed: its values ORed, its ``not`` values none-of.

For TCP (``forTCP``: an opaque tunnel at the waypoint, Envoy's network RBAC), HTTP-only keys
(hosts, methods, paths, request headers, JWT attributes) cannot be generated. ``checkError``
decides what that means: in ALLOW the whole rule is skipped (stricter); in DENY, AUDIT and CUSTOM
the key is left out (wider: "For a DENY rule, missing attributes are treated as matches", API
reference). Note: this differs from ztunnel, where a DENY match left empty never matches
(:mod:`.ztunnel_rules`), and that is what each of the two does.

The keys themselves (one predicate class per attribute) are in :mod:`.envoy_predicates`.
"""

from __future__ import annotations

from waypoint.policy.attributes import ConnectionFacts, RequestFacts
from waypoint.policy.authz.envoy_predicates import (
    AbsentPred,
    ClaimPred,
    HeaderPred,
    HostPred,
    IpPred,
    MethodPred,
    NamespacePred,
    PathPred,
    PortPred,
    Pred,
    PrincipalPred,
    RequestPrincipalPred,
    ServiceAccountPred,
    claim_path,
)
from waypoint.policy.authz.match import StringMatch
from waypoint.policy.authz.model import Action, AuthorizationPolicy, Condition, Operation, Rule, Source

AndList = tuple[Pred, ...]


CompiledRule = tuple[tuple[AndList, ...], tuple[AndList, ...]]  # (principals, permissions), each ORed lists of ANDs


class EnvoyPolicy:
    """One policy compiled for HTTP or for TCP; ``matches`` is Envoy's ``Policy`` evaluation."""

    __slots__ = ("policy", "rules")

    def __init__(self, policy: AuthorizationPolicy, rules: tuple[tuple[int, CompiledRule], ...]) -> None:
        self.policy = policy
        self.rules = rules  # (index in the policy's rules, the rule): istiod names rule i "ns[..]-policy[..]-rule[i]"

    def match_rule(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> int:
        """The index of the first rule that matches, or -1."""
        for index, (principals, permissions) in self.rules:
            if any(all(p.test(conn, req) for p in ands) for ands in principals) and any(
                all(p.test(conn, req) for p in ands) for ands in permissions
            ):
                return index
        return -1

    def matches(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> bool:
        return self.match_rule(conn, req) >= 0


def compile_envoy(policy: AuthorizationPolicy, *, for_tcp: bool) -> EnvoyPolicy:
    rules: list[tuple[int, CompiledRule]] = []
    for index, rule in enumerate(policy.rules):
        compiled = _rule(rule, policy.namespace, for_tcp=for_tcp, allow=policy.action is Action.ALLOW)
        if compiled is not None:
            rules.append((index, compiled))
    return EnvoyPolicy(policy, tuple(rules))


def _rule(
    rule: Rule, namespace: str, *, for_tcp: bool, allow: bool
) -> tuple[tuple[AndList, ...], tuple[AndList, ...]] | None:
    base_principal: list[Pred] = []
    base_permission: list[Pred] = []
    for cond in rule.conditions:
        pred = _condition(cond)
        (
            base_permission if cond.key in ("destination.ip", "destination.port", "connection.sni") else base_principal
        ).append(pred)
    principals = [base_principal + _source(s, namespace) for s in rule.sources] or [base_principal]
    permissions = [base_permission + _operation(o) for o in rule.operations] or [base_permission]
    if for_tcp:
        if allow and any(p.http_only for ands in principals + permissions for p in ands):
            return None  # checkError: the whole rule is skipped in ALLOW
        principals = [[p for p in ands if not p.http_only] for ands in principals]
        permissions = [[p for p in ands if not p.http_only] for ands in permissions]
    return tuple(tuple(a) for a in principals), tuple(tuple(a) for a in permissions)


def _source(s: Source, namespace: str) -> list[Pred]:
    preds: list[Pred] = []
    if s.ip_blocks or s.not_ip_blocks:
        preds.append(IpPred(s.ip_blocks, s.not_ip_blocks))
    if s.remote_ip_blocks or s.not_remote_ip_blocks:
        preds.append(IpPred(s.remote_ip_blocks, s.not_remote_ip_blocks))
    if s.namespaces or s.not_namespaces:
        preds.append(NamespacePred(s.namespaces, s.not_namespaces))
    if s.request_principals or s.not_request_principals:
        preds.append(RequestPrincipalPred(s.request_principals, s.not_request_principals))
    if s.principals or s.not_principals:
        preds.append(PrincipalPred(s.principals, s.not_principals))
    if s.service_accounts or s.not_service_accounts:
        preds.append(ServiceAccountPred(s.service_accounts, s.not_service_accounts, namespace))
    return preds


def _operation(o: Operation) -> list[Pred]:
    preds: list[Pred] = []
    if o.ports or o.not_ports:
        preds.append(PortPred(o.ports, o.not_ports))
    if o.paths or o.not_paths:
        preds.append(PathPred(o.paths, o.not_paths))
    if o.methods or o.not_methods:
        preds.append(MethodPred(o.methods, o.not_methods))
    if o.hosts or o.not_hosts:
        preds.append(HostPred(o.hosts, o.not_hosts))
    return preds


def _condition(c: Condition) -> Pred:
    v, nv, key = c.values, c.not_values, c.key
    if key in ("source.ip", "remote.ip"):
        return IpPred(v, nv)
    if key == "destination.ip":
        return IpPred(v, nv, destination=True)
    if key == "destination.port":
        return PortPred(tuple(int(p) for p in v), tuple(int(p) for p in nv))
    if key == "source.namespace":
        return NamespacePred(v, nv)
    if key == "source.principal":
        return PrincipalPred(v, nv)
    if key.startswith("request.headers"):
        return HeaderPred(c.header, v, nv)
    if key == "request.auth.principal":
        return RequestPrincipalPred(v, nv)
    if key == "request.auth.audiences":
        return ClaimPred(("aud",), v, nv)
    if key == "request.auth.presenter":
        return ClaimPred(("azp",), v, nv)
    if key.startswith("request.auth.claims"):
        return ClaimPred(claim_path(key), v, nv)
    return AbsentPred(v, nv)  # connection.sni: not HTTP only, but never known here


__all__ = ["EnvoyPolicy", "Pred", "StringMatch", "compile_envoy"]
