"""One route rule, compiled once per config: what a request that matched it gets.

Everything that does not depend on the request (resolved backends, cumulative weights,
header mutations, retry/timeouts, and the whole decision of a backend without rewrite, redirect
or sampled mirror) is computed at build time, so ``CompiledRule.decide`` does only the
per-request work: one RNG draw when there is more than one weighted backend, one per sampled
mirror, and path/Location string building when a filter asks for it.

Istio behaviour followed (``pilot/pkg/config/kube/gateway/conversion.go`` convertHTTPRoute):
a rule whose backendRefs weigh 0 in total (or has none) and no redirect answers 500; retry
attempts default to 2 when a ``retry`` stanza omits them, and a rule without one gets Istio's default
retry policy (``ISTIO_DEFAULT_RETRY``); a zero duration means no timeout.
An invalid backend keeps its weight and its share of requests gets 500 (spec, HTTPBackendRef).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from waypoint.l7.routing.decision import (
    ISTIO_DEFAULT_RETRY,
    DecisionKind,
    HeaderMutation,
    RetryPolicy,
    RouteDecision,
    ServiceRef,
)
from waypoint.l7.routing.match import RequestParts, matched_prefix
from waypoint.l7.routing.model import (
    Filter,
    GRPCRouteRule,
    HTTPRouteRule,
    PathMatch,
    ReferenceGrant,
    RequestRedirect,
    Route,
    URLRewrite,
)
from waypoint.l7.routing.refs import ServiceIndex, resolve_backend
from waypoint.l7.routing.rewrite import modify_path, mutation, redirect_location

ISTIO_DEFAULT_RETRY_ATTEMPTS = 2


class Rng(Protocol):
    """What routing needs of a random source (``random.Random`` fits); injected for tests."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Mirror:
    target: ServiceRef
    percent: float


@dataclass(frozen=True, slots=True)
class FilterSet:
    """The effect of a list of filters (a rule's, or one backendRef's)."""

    request_headers: tuple[HeaderMutation, ...] = ()
    response_headers: tuple[HeaderMutation, ...] = ()
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    unresolvable: bool = False  # an ExtensionRef: the spec says such requests get an error


@dataclass(frozen=True, slots=True)
class Backend:
    target: ServiceRef | None  # None: invalid ref, its share answers 500
    weight: int
    filters: FilterSet
    problem: str | None = None


def compile_filters(
    filters: Iterable[Filter], route: Route, services: ServiceIndex, grants: Iterable[ReferenceGrant]
) -> FilterSet:
    req: list[HeaderMutation] = []
    resp: list[HeaderMutation] = []
    mirrors: list[Mirror] = []
    redirect = rewrite = None
    unresolvable = False
    for f in filters:
        if f.request_header_modifier is not None:
            req.append(mutation(f.request_header_modifier))
        elif f.response_header_modifier is not None:
            resp.append(mutation(f.response_header_modifier))
        elif f.request_redirect is not None:
            redirect = f.request_redirect
        elif f.url_rewrite is not None:
            rewrite = f.url_rewrite
        elif f.request_mirror is not None:
            target, _ = resolve_backend(route, f.request_mirror.backend, services, grants)
            if target is not None:  # Istio drops a mirror whose backend does not resolve
                mirrors.append(Mirror(target, f.request_mirror.percent))
        elif f.extension_ref is not None:
            unresolvable = True
    return FilterSet(tuple(req), tuple(resp), redirect, rewrite, tuple(mirrors), unresolvable)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    route_name: str  # "HTTPRoute/ns/name#rule" for telemetry
    filters: FilterSet
    backends: tuple[Backend, ...]
    cumulative: tuple[int, ...]  # running weight sums of ``backends``
    request_timeout_s: float | None = None
    backend_timeout_s: float | None = None
    retry: RetryPolicy | None = ISTIO_DEFAULT_RETRY
    scheme: str = "http"
    # per backend, its decision when nothing in it depends on the request (else None): shared by
    # every request that picks it instead of being rebuilt each time (decisions are immutable)
    fixed: tuple[RouteDecision | None, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", tuple(self._fixed_decision(b) for b in self.backends))

    def _fixed_decision(self, backend: Backend) -> RouteDecision | None:
        """No redirect, rewrite or sampled mirror: the forward decision is the same for every request."""
        rule, own = self.filters, backend.filters
        if backend.target is None or rule.unresolvable or own.unresolvable:
            return None
        if rule.redirect is not None or own.redirect is not None or (own.rewrite or rule.rewrite) is not None:
            return None
        mirrors = rule.mirrors + own.mirrors
        if any(m.percent < 100.0 for m in mirrors):
            return None  # sampled per request
        return self._forward(backend, None, None, tuple(m.target for m in mirrors))

    def _forward(
        self, backend: Backend, new_path: str | None, new_authority: str | None, mirrors: tuple[ServiceRef, ...]
    ) -> RouteDecision:
        rule, own = self.filters, backend.filters
        return RouteDecision(
            kind=DecisionKind.FORWARD,
            backend=backend.target,
            new_path=new_path,
            new_authority=new_authority,
            request_headers=rule.request_headers + own.request_headers,
            response_headers=rule.response_headers + own.response_headers,
            mirrors=mirrors,
            request_timeout_s=self.request_timeout_s,
            backend_timeout_s=self.backend_timeout_s,
            retry=self.retry,
            route_name=self.route_name,
        )

    @classmethod
    def build(
        cls,
        route: Route,
        index: int,
        rule: HTTPRouteRule | GRPCRouteRule,
        services: ServiceIndex,
        grants: Iterable[ReferenceGrant],
        scheme: str = "http",
    ) -> CompiledRule:
        backends = []
        for b in rule.backend_refs:
            target, problem = resolve_backend(route, b.ref, services, grants)
            backends.append(
                Backend(target, b.weight, compile_filters(b.filters, route, services, grants), problem)
            )
        cumulative, total = [], 0
        for backend in backends:
            total += backend.weight
            cumulative.append(total)
        timeouts = rule.timeouts if isinstance(rule, HTTPRouteRule) else None
        retry = rule.retry if isinstance(rule, HTTPRouteRule) else None
        return cls(
            route_name=f"{route.kind}/{route.namespace}/{route.name}#{rule.name or index}",
            filters=compile_filters(rule.filters, route, services, grants),
            backends=tuple(backends),
            cumulative=tuple(cumulative),
            request_timeout_s=timeouts.request_s if timeouts else None,
            backend_timeout_s=timeouts.backend_request_s if timeouts else None,
            retry=ISTIO_DEFAULT_RETRY
            if retry is None
            else RetryPolicy(
                attempts=ISTIO_DEFAULT_RETRY_ATTEMPTS if retry.attempts is None else retry.attempts,
                codes=retry.codes,
                backoff_s=retry.backoff_s,
            ),
            scheme=scheme,
        )

    def decide(self, parts: RequestParts, path_match: PathMatch | None, rng: Rng) -> RouteDecision:
        rule = self.filters
        if rule.unresolvable:
            return self._local(500, "unresolvable ExtensionRef filter")
        if rule.redirect is not None:
            return self._redirect(rule.redirect, parts, path_match, rule.response_headers)
        total = self.cumulative[-1] if self.cumulative else 0
        if total == 0:
            return self._local(500, "no backend with weight > 0")
        pick = 0 if len(self.backends) == 1 else min(
            bisect_right(self.cumulative, rng.random() * total), len(self.backends) - 1
        )
        fixed = self.fixed[pick]
        if fixed is not None:
            return fixed
        backend = self.backends[pick]
        if backend.target is None:
            return self._local(500, backend.problem or "invalid backend")
        own = backend.filters
        if own.unresolvable:
            return self._local(500, "unresolvable ExtensionRef filter")
        if own.redirect is not None:
            return self._redirect(
                own.redirect, parts, path_match, rule.response_headers + own.response_headers
            )
        new_path, new_authority = self._rewrite(own.rewrite or rule.rewrite, parts, path_match)
        return self._forward(backend, new_path, new_authority, self._mirrors(rule.mirrors + own.mirrors, rng))

    def _local(self, status: int, reason: str) -> RouteDecision:
        return RouteDecision(
            DecisionKind.LOCAL, status=status, route_name=self.route_name, extra={"reason": reason}
        )

    def _redirect(
        self,
        redirect: RequestRedirect,
        parts: RequestParts,
        path_match: PathMatch | None,
        response_headers: tuple[HeaderMutation, ...],
    ) -> RouteDecision:
        prefix = matched_prefix(path_match, parts.path) if path_match is not None else ""
        location = redirect_location(
            redirect, parts.view.authority, parts.path, parts.query, prefix, self.scheme
        )
        return RouteDecision(
            DecisionKind.REDIRECT,
            status=redirect.status_code,
            location=location,
            response_headers=response_headers,
            route_name=self.route_name,
        )

    @staticmethod
    def _rewrite(
        rewrite: URLRewrite | None, parts: RequestParts, path_match: PathMatch | None
    ) -> tuple[str | None, str | None]:
        if rewrite is None:
            return None, None
        new_path = None
        if rewrite.path is not None:
            prefix = matched_prefix(path_match, parts.path) if path_match is not None else ""
            new_path = modify_path(parts.path, parts.query, rewrite.path, prefix)
        return new_path, rewrite.hostname

    @staticmethod
    def _mirrors(mirrors: tuple[Mirror, ...], rng: Rng) -> tuple[ServiceRef, ...]:
        if not mirrors:
            return ()
        return tuple(m.target for m in mirrors if m.percent >= 100.0 or rng.random() * 100.0 < m.percent)
