"""The route table of one attachment point, and the set of tables of a mesh.

``RouteTable.build`` takes every HTTPRoute/GRPCRoute, keeps those attached to one parent (a
Service port under GAMMA, or a Gateway listener), and orders all their matches by the spec's
precedence (see ``match.py``). ``resolve`` walks that order and returns the first matching
rule's decision.

GAMMA specifics (GEP-1294, conformance ``tests/mesh``):
- A route in the Service's own namespace is a *producer* route and applies to every client.
  A route in another namespace is a *consumer* route: it applies only to clients in the route's
  namespace, and for them it replaces the producer routes (MeshConsumerRoute).
- Route ``hostnames`` do not take part in matching for Service parents (the dialled Service is
  the frontend: MeshFrontendHostname); they do for Gateway parents.
- Routes attached but no rule matches: 404, which a gRPC client reads as Unimplemented (the
  decision carries ``extra["grpc_status"] = "12"`` for gRPC requests, as Envoy's local reply).
  No route attached: FORWARD to the dialled service unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from waypoint.l7.routing.compile import CompiledRule, Rng
from waypoint.l7.routing.decision import DecisionKind, RequestView, RouteDecision, ServiceRef
from waypoint.l7.routing.match import (
    RequestParts,
    grpc_match,
    grpc_precedence,
    http_match,
    http_precedence,
)
from waypoint.l7.routing.model import (
    GRPCRoute,
    GRPCRouteMatch,
    HTTPRoute,
    HTTPRouteMatch,
    ReferenceGrant,
    Route,
)
from waypoint.l7.routing.refs import GatewayParent, Parent, ServiceIndex, attached_parent_refs
from waypoint.l7.routing.rewrite import split_authority

GRPC_UNIMPLEMENTED = "12"
_UNROUTED_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Entry:
    """One match of one rule: the unit the precedence order sorts."""

    match: HTTPRouteMatch | GRPCRouteMatch
    rule: CompiledRule
    hostnames: tuple[str, ...]  # empty: any host (always empty for Service parents)
    sort_key: tuple[Any, ...]
    # matches every request (PathPrefix "/" and nothing else, any host): no per-request test
    catch_all: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        m = self.match
        if isinstance(m, HTTPRouteMatch):
            everything = m.path.type == "PathPrefix" and not m.path.prefix and not m.query_params
        else:
            everything = True
        catch_all = not self.hostnames and everything and m.method is None and not m.headers
        object.__setattr__(self, "catch_all", catch_all)

    @property
    def grpc(self) -> bool:
        return isinstance(self.match, GRPCRouteMatch)

    def matches(self, parts: RequestParts, host: str) -> bool:
        if self.hostnames and not _host_matches(self.hostnames, host):
            return False
        if isinstance(self.match, GRPCRouteMatch):
            return grpc_match(self.match, parts)
        return http_match(self.match, parts)


@dataclass(frozen=True, slots=True)
class _Ordered:
    """Entries of one audience in precedence order: GRPCRoutes first for gRPC requests
    (the spec lets a GRPCRoute win over an HTTPRoute on the same parent), HTTPRoutes first
    otherwise."""

    grpc_first: tuple[Entry, ...]
    http_first: tuple[Entry, ...]

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> _Ordered:
        ordered = sorted(entries, key=lambda e: e.sort_key)
        grpc = [e for e in ordered if e.grpc]
        http = [e for e in ordered if not e.grpc]
        return cls(tuple(grpc + http), tuple(http + grpc))


class RouteTable:
    """Routing for one parent. Immutable once built; ``resolve`` is pure but for the RNG."""

    def __init__(self, parent: Parent, producer: _Ordered, consumers: Mapping[str, _Ordered]) -> None:
        self.parent = parent
        self._producer = producer
        self._consumers = dict(consumers)
        self._by_host = isinstance(parent, GatewayParent)  # hostnames match only on Gateway parents

    @classmethod
    def build(
        cls,
        parent: Parent,
        routes: Iterable[Route],
        services: ServiceIndex,
        reference_grants: Iterable[ReferenceGrant] = (),
        *,
        scheme: str = "http",
    ) -> RouteTable:
        grants = tuple(reference_grants)
        producer: list[Entry] = []
        consumers: dict[str, list[Entry]] = {}
        for route in routes:
            if not attached_parent_refs(route, parent, services):
                continue
            entries = list(_entries(route, parent, services, grants, scheme))
            if isinstance(parent, ServiceRef) and route.namespace != parent.namespace:
                consumers.setdefault(route.namespace, []).extend(entries)
            else:
                producer.extend(entries)
        return cls(
            parent,
            _Ordered.of(producer),
            {ns: _Ordered.of(entries) for ns, entries in consumers.items()},
        )

    @property
    def empty(self) -> bool:
        return not self._producer.http_first and not self._consumers

    def entries(self, source_namespace: str | None = None) -> tuple[Entry, ...]:
        """The entries a client in ``source_namespace`` is routed by, in precedence order."""
        audience = self._consumers.get(source_namespace or "", self._producer)
        return audience.http_first

    def resolve(self, request: RequestView, rng: Rng) -> RouteDecision:
        consumers = self._consumers
        audience = consumers.get(request.source_namespace or "", self._producer) if consumers else self._producer
        ordered = audience.grpc_first if request.grpc else audience.http_first
        if not ordered:
            return forward_unrouted(request)
        parts = RequestParts.of(request)
        host = split_authority(request.authority)[0].lower() if self._by_host else ""
        for entry in ordered:
            if entry.catch_all or entry.matches(parts, host):
                path_match = entry.match.path if isinstance(entry.match, HTTPRouteMatch) else None
                return entry.rule.decide(parts, path_match, rng)
        extra = {"reason": "no matching route rule"}
        if request.grpc:
            extra["grpc_status"] = GRPC_UNIMPLEMENTED
        return RouteDecision(DecisionKind.LOCAL, status=404, extra=extra)


class RouteTables:
    """Every Service-port table of a mesh snapshot, looked up by the service the client dialled."""

    def __init__(self, tables: Mapping[ServiceRef, RouteTable]) -> None:
        self._tables = dict(tables)
        # unrouted decisions by dialled service port: immutable values, reused (capped, see resolve)
        self._unrouted: dict[ServiceRef | None, RouteDecision] = {}

    @classmethod
    def build(
        cls,
        routes: Iterable[Route],
        services: ServiceIndex,
        reference_grants: Iterable[ReferenceGrant] = (),
    ) -> RouteTables:
        routes = tuple(routes)
        grants = tuple(reference_grants)
        tables = {}
        for (ns, name), ports in services.items():
            for port in ports:
                ref = ServiceRef(ns, name, port)
                table = RouteTable.build(ref, routes, services, grants)
                if not table.empty:
                    tables[ref] = table
        return cls(tables)

    def table(self, dialled: ServiceRef) -> RouteTable | None:
        return self._tables.get(dialled)

    def resolve(self, request: RequestView, rng: Rng) -> RouteDecision:
        dialled = request.dialled
        table = self._tables.get(dialled) if dialled is not None else None
        if table is not None:
            return table.resolve(request, rng)
        # a pod dialled directly, or a service with no route (MeshFrontend, MeshBasic)
        unrouted = self._unrouted
        decision = unrouted.get(dialled)
        if decision is None:
            if len(unrouted) >= _UNROUTED_LIMIT:  # any port of a VIP can be dialled: stay bounded
                unrouted.clear()
            decision = unrouted[dialled] = forward_unrouted(request)
        return decision


class BoundResolver:
    """``RouteTables`` with its random source bound: the one-argument ``resolve(view)`` that the
    router filter's ``RouteResolver`` protocol (``waypoint/l7/router.py``) calls."""

    __slots__ = ("_rng", "_tables")

    def __init__(self, tables: RouteTables, rng: Rng) -> None:
        self._tables = tables
        self._rng = rng

    def resolve(self, view: RequestView) -> RouteDecision:
        return self._tables.resolve(view, self._rng)


def forward_unrouted(request: RequestView) -> RouteDecision:
    """No route applies: send to what was dialled (``backend`` None = the original destination)."""
    return RouteDecision(DecisionKind.FORWARD, backend=request.dialled, route_name="")


def _entries(
    route: Route, parent: Parent, services: ServiceIndex, grants: tuple[ReferenceGrant, ...], scheme: str
) -> Iterable[Entry]:
    hostnames = route.hostnames if isinstance(parent, GatewayParent) else ()
    tie = (_created_key(route.created), f"{route.namespace}/{route.name}")
    if isinstance(route, HTTPRoute):
        for i, rule in enumerate(route.rules):
            compiled = CompiledRule.build(route, i, rule, services, grants, scheme)
            for j, m in enumerate(rule.matches):
                yield Entry(m, compiled, hostnames, (http_precedence(m), *tie, i, j))
    else:
        assert isinstance(route, GRPCRoute)
        for i, grule in enumerate(route.rules):
            compiled = CompiledRule.build(route, i, grule, services, grants, scheme)
            for j, gm in enumerate(grule.matches):
                yield Entry(gm, compiled, hostnames, (grpc_precedence(gm), *tie, i, j))


def _created_key(created: datetime | None) -> float:
    return created.timestamp() if created is not None else float("inf")


def _host_matches(hostnames: tuple[str, ...], host: str) -> bool:
    for h in hostnames:
        if h.startswith("*."):
            if host.endswith(h[1:]) and len(host) > len(h) - 1:
                return True
        elif host == h:
            return True
    return False
