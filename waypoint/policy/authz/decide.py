"""Combining the policies that apply into one :class:`Decision`.

The order is the API's (``security/v1beta1/authorization_policy.proto``, "Authorization Policy"
evaluation) and ztunnel's (``ZT:src/state.rs`` ``assert_rbac``): CUSTOM first, then DENY, then
ALLOW; AUDIT never changes the answer. If ALLOW policies apply and none matches, deny; if none
applies, allow. Dry-run policies (``istio.io/dry-run: "true"``) are evaluated and reported in
``dry_run_denied_by``, never enforced.

CUSTOM: no ext-authz provider is wired into this data plane, so a request matching a CUSTOM
policy's rules (the requests that would be sent to the provider) is denied: fail closed, as Envoy's
``ext_authz`` does when its service is unreachable (``failure_mode_allow: false``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

from waypoint.policy.attributes import ALLOW, ConnectionFacts, Decision, RequestFacts
from waypoint.policy.authz.model import Action, AuthorizationPolicy

NO_ALLOW_MATCHED = Decision(False, reason="denied: ALLOW policies apply and none matched")


class Matcher(Protocol):
    """A compiled policy (:class:`.ztunnel_rules.L4Policy` or :class:`.envoy_rules.EnvoyPolicy`)."""

    @property
    def policy(self) -> AuthorizationPolicy: ...

    def matches(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> bool: ...


class Entry:
    """A compiled policy with its decisions made up front, so a check allocates nothing."""

    __slots__ = ("key", "matcher", "on_match")

    def __init__(self, matcher: Matcher) -> None:
        policy = matcher.policy
        self.matcher = matcher
        self.key = policy.key
        if policy.action is Action.CUSTOM:
            reason = f"CUSTOM provider {policy.provider} not available"
            self.on_match = Decision(False, policy=self.key, reason=reason)
        elif policy.action is Action.DENY:
            self.on_match = Decision(False, policy=self.key, reason=f"denied by DENY policy {self.key}")
        else:
            self.on_match = Decision(True, policy=self.key, reason=f"allowed by ALLOW policy {self.key}")


class PolicySet:
    """The policies that apply to one target (a workload, or a waypoint + service), by action."""

    __slots__ = ("allow", "custom", "deny", "dry_allow", "dry_custom", "dry_deny", "empty", "names")

    def __init__(self, matchers: Iterable[Matcher]) -> None:
        enforced: dict[Action, list[Entry]] = {a: [] for a in Action}
        dry: dict[Action, list[Entry]] = {a: [] for a in Action}
        names: list[str] = []
        for m in matchers:
            names.append(m.policy.key)
            (dry if m.policy.dry_run else enforced)[m.policy.action].append(Entry(m))
        self.custom = tuple(enforced[Action.CUSTOM])
        self.deny = tuple(enforced[Action.DENY])
        self.allow = tuple(enforced[Action.ALLOW])
        self.dry_custom = tuple(dry[Action.CUSTOM])
        self.dry_deny = tuple(dry[Action.DENY])
        self.dry_allow = tuple(dry[Action.ALLOW])
        self.names = tuple(names)  # every applying policy, AUDIT included (config dump)
        has_dry = self.dry_custom or self.dry_deny or self.dry_allow
        self.empty = not (self.custom or self.deny or self.allow or has_dry)


EMPTY = PolicySet(())


def evaluate(policies: PolicySet, conn: ConnectionFacts, req: RequestFacts | None) -> Decision:
    if policies.empty:
        return ALLOW
    decision = _enforced(policies, conn, req)
    if policies.dry_custom or policies.dry_deny or policies.dry_allow:
        would_deny = _dry_run(policies, conn, req)
        if would_deny:
            return replace(decision, dry_run_denied_by=would_deny)
    return decision


def _enforced(policies: PolicySet, conn: ConnectionFacts, req: RequestFacts | None) -> Decision:
    for entry in policies.custom:
        if entry.matcher.matches(conn, req):
            return entry.on_match
    for entry in policies.deny:
        if entry.matcher.matches(conn, req):
            return entry.on_match
    if not policies.allow:
        return ALLOW
    for entry in policies.allow:
        if entry.matcher.matches(conn, req):
            return entry.on_match
    return NO_ALLOW_MATCHED


def _dry_run(policies: PolicySet, conn: ConnectionFacts, req: RequestFacts | None) -> tuple[str, ...]:
    """Dry-run CUSTOM/DENY that match, and the dry-run ALLOWs when none of them matches
    (Envoy's shadow engine over the dry-run policies, ``builder.go`` shadow rules)."""
    hits = [e.key for e in policies.dry_custom + policies.dry_deny if e.matcher.matches(conn, req)]
    if policies.dry_allow and not any(e.matcher.matches(conn, req) for e in policies.dry_allow):
        hits.extend(e.key for e in policies.dry_allow)
    return tuple(hits)
