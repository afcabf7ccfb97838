"""Which parent a route attaches to, and whether a backendRef resolves.

Shared by the route table (what traffic does) and route status (what the admin dump says), so
both always agree. The reasons are the Gateway API ResolvedRefs reasons (``shared_types.go``):
``BackendNotFound``, ``InvalidKind``, ``RefNotPermitted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from waypoint.l7.routing.decision import ServiceRef
from waypoint.l7.routing.model import (
    CORE_GROUPS,
    GATEWAY_GROUP,
    BackendObjectRef,
    ParentRef,
    ReferenceGrant,
    Route,
)

# (namespace, name) -> {port number: port name}: the Services routing may send to.
ServiceIndex = Mapping[tuple[str, str], Mapping[int, str]]

BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
REF_NOT_PERMITTED = "RefNotPermitted"


@dataclass(frozen=True, slots=True)
class GatewayParent:
    """A waypoint (or other) Gateway listener as an attachment point."""

    namespace: str
    name: str
    section_name: str | None = None
    port: int | None = None


Parent = ServiceRef | GatewayParent


def attaches(route: Route, ref: ParentRef, parent: Parent, services: ServiceIndex) -> bool:
    """Does this parentRef of ``route`` select ``parent``? (GAMMA: Service + optional port.)"""
    ns = ref.namespace or route.namespace
    if isinstance(parent, ServiceRef):
        if not ref.is_service or ref.name != parent.name or ns != parent.namespace:
            return False
        if ref.port is not None and ref.port != parent.port:
            return False
        if ref.section_name is not None:
            return services.get((parent.namespace, parent.name), {}).get(parent.port) == ref.section_name
        return True
    if ref.kind != "Gateway" or ref.group != GATEWAY_GROUP:
        return False
    if ref.name != parent.name or ns != parent.namespace:
        return False
    if (
        ref.section_name is not None
        and parent.section_name is not None
        and ref.section_name != parent.section_name
    ):
        return False
    return ref.port is None or parent.port is None or ref.port == parent.port


def attached_parent_refs(route: Route, parent: Parent, services: ServiceIndex) -> list[ParentRef]:
    return [ref for ref in route.parent_refs if attaches(route, ref, parent, services)]


def grant_allows(
    grants: Iterable[ReferenceGrant], route_kind: str, route_ns: str, target_ns: str, target_name: str
) -> bool:
    for g in grants:
        if g.namespace != target_ns:
            continue
        if not any(
            f.group == GATEWAY_GROUP and f.kind == route_kind and f.namespace == route_ns for f in g.from_
        ):
            continue
        if any(
            t.group in CORE_GROUPS and t.kind == "Service" and t.name in (None, target_name) for t in g.to
        ):
            return True
    return False


def resolve_backend(
    route: Route,
    ref: BackendObjectRef,
    services: ServiceIndex,
    grants: Iterable[ReferenceGrant],
) -> tuple[ServiceRef | None, str | None]:
    """(target, None) when usable, else (None, reason).

    A cross-namespace reference needs a ReferenceGrant, except a reference to the route's own
    Service parent: a GAMMA consumer route (MeshConsumerRoute) sends to the Service it is
    attached to without any grant, and the conformance suite expects that to work.
    """
    if ref.group not in CORE_GROUPS or ref.kind != "Service":
        return None, INVALID_KIND
    ns = ref.namespace or route.namespace
    if (
        ns != route.namespace
        and not _is_own_parent(route, ns, ref.name)
        and not grant_allows(grants, route.kind, route.namespace, ns, ref.name)
    ):
        return None, REF_NOT_PERMITTED
    ports = services.get((ns, ref.name))
    if ports is None or ref.port is None or ref.port not in ports:
        return None, BACKEND_NOT_FOUND
    return ServiceRef(ns, ref.name, ref.port), None


def _is_own_parent(route: Route, ns: str, name: str) -> bool:
    return any(
        p.is_service and p.name == name and (p.namespace or route.namespace) == ns for p in route.parent_refs
    )
