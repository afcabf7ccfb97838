"""Route status conditions (Accepted, ResolvedRefs), computed purely for the admin dump and logs.

Condition types and reasons are the Gateway API ones (``shared_types.go`` RouteConditionType /
RouteConditionReason). We do not write status to any API server; this is what an operator
reads to learn why a route does nothing or answers 500.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from waypoint.l7.routing.model import (
    GATEWAY_GROUP,
    BackendObjectRef,
    GRPCRouteRule,
    HTTPRouteRule,
    ParentRef,
    ReferenceGrant,
    Route,
)
from waypoint.l7.routing.refs import REF_NOT_PERMITTED, ServiceIndex, resolve_backend


@dataclass(frozen=True, slots=True)
class Condition:
    type: str  # "Accepted" | "ResolvedRefs"
    status: str  # "True" | "False"
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class ParentStatus:
    parent_ref: ParentRef
    conditions: tuple[Condition, ...]

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def route_status(
    route: Route,
    services: ServiceIndex,
    reference_grants: Iterable[ReferenceGrant] = (),
    gateways: Collection[tuple[str, str]] = (),
) -> tuple[ParentStatus, ...]:
    """One ParentStatus per parentRef. ``gateways``: (namespace, name) of the Gateways we serve."""
    resolved = _resolved_refs(route, services, tuple(reference_grants))
    return tuple(
        ParentStatus(ref, (_accepted(route, ref, services, gateways), resolved)) for ref in route.parent_refs
    )


def _accepted(
    route: Route, ref: ParentRef, services: ServiceIndex, gateways: Collection[tuple[str, str]]
) -> Condition:
    ns = ref.namespace or route.namespace
    if ref.is_service:
        ports = services.get((ns, ref.name))
        if ports is None:
            return Condition(
                "Accepted", "False", "NoMatchingParent", f"parent service {ns}/{ref.name} not found"
            )
        if ref.port is not None and ref.port not in ports:
            return Condition(
                "Accepted", "False", "NoMatchingParent", f"service {ns}/{ref.name} has no port {ref.port}"
            )
        return Condition("Accepted", "True", "Accepted")
    if ref.kind == "Gateway" and ref.group == GATEWAY_GROUP:
        if (ns, ref.name) in gateways:
            return Condition("Accepted", "True", "Accepted")
        return Condition("Accepted", "False", "NoMatchingParent", f"gateway {ns}/{ref.name} not found")
    return Condition(
        "Accepted", "False", "NotAllowedByListeners", f"unsupported parent kind {ref.group}/{ref.kind}"
    )


def _resolved_refs(route: Route, services: ServiceIndex, grants: tuple[ReferenceGrant, ...]) -> Condition:
    problems: list[tuple[str, str]] = []
    for ref, where in _all_backend_refs(route):
        target, reason = resolve_backend(route, ref, services, grants)
        if target is None and reason is not None:
            ns = ref.namespace or route.namespace
            problems.append((reason, f"{where}: {ref.kind} {ns}/{ref.name}:{ref.port}: {reason}"))
    if not problems:
        return Condition("ResolvedRefs", "True", "ResolvedRefs")
    # RefNotPermitted is the most actionable (a missing grant); otherwise report the first.
    reason = next((r for r, _ in problems if r == REF_NOT_PERMITTED), problems[0][0])
    return Condition("ResolvedRefs", "False", reason, "; ".join(m for _, m in problems))


def _all_backend_refs(route: Route) -> Iterable[tuple[BackendObjectRef, str]]:
    rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
    for i, rule in enumerate(rules):
        for f_i, f in enumerate(rule.filters):
            if f.request_mirror is not None:
                yield f.request_mirror.backend, f"spec.rules[{i}].filters[{f_i}].requestMirror"
        for b_i, b in enumerate(rule.backend_refs):
            yield b.ref, f"spec.rules[{i}].backendRefs[{b_i}]"
            for f_i, f in enumerate(b.filters):
                if f.request_mirror is not None:
                    yield (
                        f.request_mirror.backend,
                        f"spec.rules[{i}].backendRefs[{b_i}].filters[{f_i}].requestMirror",
                    )
