"""Combining the policies that apply into one :class:`Decision`.

The order is the API's (``security/v1beta1/authorization_policy.proto``, "Authorization Policy"
evaluation) and ztunnel's (``ZT:src/state.rs`` ``assert_rbac``): CUSTOM first, then DENY, then
ALLOW; AUDIT never changes the answer. If ALLOW policies apply and none matches, deny; if none
applies, allow. Dry-run policies (``istio.io/dry-run: "true"``) are evaluated and reported in
``dry_run_denied_by``, never enforced.

CUSTOM: a policy whose provider is configured (MeshConfig ``extensionProviders``, see
:mod:`waypoint.policy.meshconfig`) is not decided here: :func:`custom_providers` names the providers
whose CUSTOM rules match, and the waypoint's ext_authz filter asks them before RBAC runs (Istio: a
shadow RBAC filter marks the request, ``ext_authz`` runs only when marked; one filter pair per
provider, in provider-name order: ``IS:pilot/pkg/security/authz/builder/builder.go`` ``buildHTTP``).
A request matching a CUSTOM policy whose provider is not configured is denied: fail closed, as
istiod generates deny rules for them (``getBadCustomDenyRules``, "failed to process CUSTOM action").
On a TCP chain an HTTP provider's policies do not apply (``buildTCP``: "ignored CUSTOM action with
HTTP provider on TCP filter chain"); ``skipped`` names those.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
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

    def match_rule(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> int: ...


class Entry:
    """A compiled policy with its decisions made up front, so a check allocates nothing."""

    __slots__ = ("key", "matcher", "on_match")

    def __init__(self, matcher: Matcher) -> None:
        policy = matcher.policy
        self.matcher = matcher
        self.key = policy.key
        if policy.action is Action.CUSTOM:
            allowed, reason = False, f"CUSTOM provider {policy.provider} not available"
        elif policy.action is Action.DENY:
            allowed, reason = False, f"denied by DENY policy {self.key}"
        else:
            allowed, reason = True, f"allowed by ALLOW policy {self.key}"
        if origin := getattr(matcher, "origin", ""):  # a policy istiod derived (peer_authn_l4.ConvertedPolicy)
            reason = f"{reason} ({origin})"
        # one answer per rule, by its index in the policy (the rule that matched names it, as Envoy's
        # "ns[..]-policy[..]-rule[i]")
        self.on_match = tuple(
            Decision(allowed, policy=self.key, reason=reason, rule=i) for i in range(max(1, len(policy.rules)))
        )

    def decide(self, conn: ConnectionFacts, req: RequestFacts | None) -> Decision | None:
        """This policy's answer if one of its rules matches, else None."""
        index = self.matcher.match_rule(conn, req)
        return self.on_match[index] if index >= 0 else None


class PolicySet:
    """The policies that apply to one target (a workload, or a waypoint + service), by action."""

    __slots__ = ("allow", "custom", "deny", "dry_allow", "dry_custom", "dry_deny", "empty", "ext_authz", "names")

    def __init__(
        self, matchers: Iterable[Matcher], asked: Collection[str] = (), skipped: Collection[str] = ()
    ) -> None:
        """``asked``: providers the ext_authz filter calls; ``skipped``: providers whose CUSTOM
        policies do not apply here. CUSTOM naming any other provider denies what it matches."""
        enforced: dict[Action, list[Entry]] = {a: [] for a in Action}
        dry: dict[Action, list[Entry]] = {a: [] for a in Action}
        by_provider: dict[str, list[Entry]] = {}
        names: list[str] = []
        for m in matchers:
            names.append(m.policy.key)
            policy = m.policy
            if policy.action is Action.CUSTOM and not policy.dry_run and policy.provider in asked:
                by_provider.setdefault(policy.provider, []).append(Entry(m))
            elif policy.action is not Action.CUSTOM or policy.provider not in skipped:
                (dry if policy.dry_run else enforced)[policy.action].append(Entry(m))
        # (provider, its CUSTOM policies) in provider-name order (builder.go sorts the providers)
        self.ext_authz = tuple((p, tuple(by_provider[p])) for p in sorted(by_provider))
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


def custom_providers(policies: PolicySet, conn: ConnectionFacts, req: RequestFacts | None) -> tuple[str, ...]:
    """The configured providers to ask, in order: those with a CUSTOM policy whose rules match."""
    return tuple(
        provider for provider, entries in policies.ext_authz if any(e.matcher.matches(conn, req) for e in entries)
    )


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
        if (decision := entry.decide(conn, req)) is not None:
            return decision
    for entry in policies.deny:
        if (decision := entry.decide(conn, req)) is not None:
            return decision
    if not policies.allow:
        return ALLOW
    for entry in policies.allow:
        if (decision := entry.decide(conn, req)) is not None:
            return decision
    return NO_ALLOW_MATCHED


def _dry_run(policies: PolicySet, conn: ConnectionFacts, req: RequestFacts | None) -> tuple[str, ...]:
    """Dry-run CUSTOM/DENY that match, and the dry-run ALLOWs when none of them matches
    (Envoy's shadow engine over the dry-run policies, ``builder.go`` shadow rules)."""
    hits = [e.key for e in policies.dry_custom + policies.dry_deny if e.matcher.matches(conn, req)]
    if policies.dry_allow and not any(e.matcher.matches(conn, req) for e in policies.dry_allow):
        hits.extend(e.key for e in policies.dry_allow)
    return tuple(hits)
