"""The L4 form ztunnel evaluates: istiod's conversion, then ztunnel's matcher.

Conversion: ``IS:pilot/pkg/serviceregistry/ambient/authorization.go`` ``convertAuthorizationPolicy``
and ``handleRule`` (facts §3.2). Policies with ``targetRefs`` are not sent; CUSTOM and AUDIT are
refused. Each rule becomes a group of clauses (``to`` matches, ``from`` matches, one per ``when``);
HTTP fields are left out of each match. In an ALLOW policy a rule that had any HTTP field is
dropped (stricter); in a DENY it is kept without them, and a match left empty never matches.

Evaluation: ``ZT:src/rbac.rs`` ``Authorization::matches``: no rules -> no match; a rule matches
when every clause does; a clause with no matches is true, otherwise one non-empty match must hold;
inside a match every declared field (positive ORed, negative none-of) must hold.
"""

from __future__ import annotations

import logging

from waypoint.policy.attributes import ConnectionFacts, RequestFacts
from waypoint.policy.authz.match import (
    IPNetwork,
    any_match,
    ip_blocks,
    ip_in,
    string_matches,
)
from waypoint.policy.authz.model import Action, AuthorizationPolicy, Condition, Rule

log = logging.getLogger(__name__)


class L4Match:
    """One ``istio.security.Match`` (``ZT:proto/authorization.proto``)."""

    __slots__ = (
        "destination_ips",
        "destination_ports",
        "empty",
        "namespaces",
        "not_destination_ips",
        "not_destination_ports",
        "not_namespaces",
        "not_principals",
        "not_service_accounts",
        "not_source_ips",
        "principals",
        "service_accounts",
        "source_ips",
    )  # fmt: skip

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...] = (),
        not_namespaces: tuple[str, ...] = (),
        service_accounts: tuple[tuple[str, str], ...] = (),
        not_service_accounts: tuple[tuple[str, str], ...] = (),
        principals: tuple[str, ...] = (),
        not_principals: tuple[str, ...] = (),
        source_ips: tuple[str, ...] = (),
        not_source_ips: tuple[str, ...] = (),
        destination_ips: tuple[str, ...] = (),
        not_destination_ips: tuple[str, ...] = (),
        destination_ports: tuple[int, ...] = (),
        not_destination_ports: tuple[int, ...] = (),
    ) -> None:
        self.namespaces = string_matches(namespaces)
        self.not_namespaces = string_matches(not_namespaces)
        self.service_accounts = frozenset(service_accounts)
        self.not_service_accounts = frozenset(not_service_accounts)
        self.principals = string_matches(principals)
        self.not_principals = string_matches(not_principals)
        self.source_ips: tuple[IPNetwork, ...] = ip_blocks(source_ips)
        self.not_source_ips: tuple[IPNetwork, ...] = ip_blocks(not_source_ips)
        self.destination_ips: tuple[IPNetwork, ...] = ip_blocks(destination_ips)
        self.not_destination_ips: tuple[IPNetwork, ...] = ip_blocks(not_destination_ips)
        self.destination_ports = frozenset(destination_ports)
        self.not_destination_ports = frozenset(not_destination_ports)
        self.empty = not any(
            (namespaces, not_namespaces, service_accounts, not_service_accounts, principals,
             not_principals, source_ips, not_source_ips, destination_ips, not_destination_ips,
             destination_ports, not_destination_ports)
        )  # fmt: skip

    def matches(self, conn: ConnectionFacts) -> bool:
        ident = conn.source_identity
        if self.destination_ips and not ip_in(self.destination_ips, conn.destination_ip):
            return False
        if self.not_destination_ips and ip_in(self.not_destination_ips, conn.destination_ip):
            return False
        if self.source_ips and not ip_in(self.source_ips, conn.source_ip):
            return False
        if self.not_source_ips and ip_in(self.not_source_ips, conn.source_ip):
            return False
        port = conn.destination_port
        if self.destination_ports and port not in self.destination_ports:
            return False
        if port in self.not_destination_ports:
            return False
        if self.service_accounts or self.not_service_accounts:
            sa = None if ident is None else (ident.namespace, ident.service_account)
            if self.service_accounts and sa not in self.service_accounts:
                return False
            if sa is not None and sa in self.not_service_accounts:
                return False
        if self.principals or self.not_principals:
            # rbac.rs ``matches_principal``: the SPIFFE ID without "spiffe://"; none -> no match.
            principal = (
                None if ident is None else f"{ident.trust_domain}/ns/{ident.namespace}/sa/{ident.service_account}"
            )
            if self.principals and not any_match(self.principals, principal):
                return False
            if self.not_principals and any_match(self.not_principals, principal):
                return False
        ns = "" if ident is None else ident.namespace  # rbac.rs: unwrap_or_default()
        if self.namespaces and not any_match(self.namespaces, ns):
            return False
        return not (self.not_namespaces and any_match(self.not_namespaces, ns))


Clause = tuple[L4Match, ...]


class L4Policy:
    """A policy as ztunnel holds it: ``rules`` -> clauses -> matches."""

    __slots__ = ("http_fields", "policy", "rules")

    def __init__(
        self, policy: AuthorizationPolicy, rules: tuple[tuple[int, tuple[Clause, ...]], ...],
        http_fields: tuple[str, ...],
    ) -> None:
        self.policy = policy
        self.rules = rules  # (index in the policy's rules, its clauses); dropped rules keep their numbers
        self.http_fields = http_fields

    def match_rule(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> int:
        """The index of the first rule that matches, or -1."""
        for index, rule in self.rules:
            if all(_clause_matches(clause, conn) for clause in rule):
                return index
        return -1

    def matches(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> bool:
        return self.match_rule(conn) >= 0


def _clause_matches(clause: Clause, conn: ConnectionFacts) -> bool:
    if not clause:
        return True
    return any(not m.empty and m.matches(conn) for m in clause)


def compile_l4(policy: AuthorizationPolicy) -> L4Policy | None:
    """istiod's conversion; ``None`` for what ztunnel never receives (targetRefs, CUSTOM, AUDIT)."""
    if policy.target_refs:
        return None
    if policy.action not in (Action.ALLOW, Action.DENY):
        log.info(
            "AuthorizationPolicy %s: ztunnel does not support the %s action; ignored at L4",
            policy.key,
            policy.action.value,
        )
        return None
    rules: list[tuple[int, tuple[Clause, ...]]] = []
    http: set[str] = set()
    for index, rule in enumerate(policy.rules):
        clauses, found = _convert_rule(rule, policy.namespace)
        http.update(found)
        if found and policy.action is Action.ALLOW:
            continue  # "L7 policies never match for ALLOW"
        rules.append((index, clauses))
    if http:
        log.warning(
            "AuthorizationPolicy %s: ztunnel does not support HTTP attributes (found: %s); %s",
            policy.key, ", ".join(sorted(http)),
            "rules using them are omitted from this ALLOW policy" if policy.action is Action.ALLOW
            else "this DENY policy is enforced without the HTTP parts",
        )  # fmt: skip
    return L4Policy(policy, tuple(rules), tuple(sorted(http)))


def _convert_rule(rule: Rule, namespace: str) -> tuple[tuple[Clause, ...], list[str]]:
    found: list[str] = []
    clauses: list[Clause] = []
    if rule.operations:
        for op in rule.operations:
            found.extend(op.http_fields)
        clauses.append(
            tuple(L4Match(destination_ports=op.ports, not_destination_ports=op.not_ports) for op in rule.operations)
        )
    if rule.sources:
        matches: list[L4Match] = []
        for s in rule.sources:
            found.extend(s.http_fields)
            matches.append(
                L4Match(
                    source_ips=s.ip_blocks,
                    not_source_ips=s.not_ip_blocks,
                    namespaces=s.namespaces,
                    not_namespaces=s.not_namespaces,
                    service_accounts=_service_accounts(s.service_accounts, namespace),
                    not_service_accounts=_service_accounts(s.not_service_accounts, namespace),
                    principals=s.principals,
                    not_principals=s.not_principals,
                )
            )
        clauses.append(tuple(matches))
    for cond in rule.conditions:
        if not cond.is_l4:
            found.append(cond.key)
        clauses.append((_when_match(cond),))
    return tuple(clauses), found


def _when_match(cond: Condition) -> L4Match:
    """authorization.go ``whenMatch``: one match per condition; non-L4 keys give an empty one."""
    v, nv = cond.values, cond.not_values
    key = cond.key
    if key == "source.namespace":
        return L4Match(namespaces=v, not_namespaces=nv)
    if key == "source.principal":
        return L4Match(principals=v, not_principals=nv)
    if key == "source.ip":
        return L4Match(source_ips=v, not_source_ips=nv)
    if key == "destination.ip":
        return L4Match(destination_ips=v, not_destination_ips=nv)
    if key == "destination.port":
        return L4Match(destination_ports=tuple(int(p) for p in v), not_destination_ports=tuple(int(p) for p in nv))
    return L4Match()


def _service_accounts(values: tuple[str, ...], namespace: str) -> tuple[tuple[str, str], ...]:
    """``stringToServiceAccountMatch``: ``ns/sa``, or ``sa`` in the policy's namespace."""
    out: list[tuple[str, str]] = []
    for v in values:
        ns, sep, sa = v.partition("/")
        out.append((ns, sa) if sep else (namespace, v))
    return tuple(out)
