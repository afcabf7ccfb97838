"""What a waypoint derives from one mesh snapshot: route tables and endpoint targets.

Pure: built once per snapshot (the model is swapped whole, so is this), read per request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waypoint.errors import ManifestError
from waypoint.l7.routing.decision import ServiceRef
from waypoint.l7.routing.model import GRPCRoute, HTTPRoute, ReferenceGrant
from waypoint.l7.routing.parse import parse_grpcroute, parse_httproute, parse_reference_grant
from waypoint.l7.routing.status import ParentStatus, route_status
from waypoint.l7.routing.table import RouteTables
from waypoint.l7.upstream import UpstreamProtocol, UpstreamTarget
from waypoint.mesh.model import KubeObject, Service
from waypoint.mesh.state import MeshState, port_protocol

log = logging.getLogger(__name__)

# Istio protocols (``port_protocol``) that we speak as HTTP/2 with prior knowledge upstream.
H2C_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-Web"})
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-Web"})


def _parsed(objects: Iterable[KubeObject], parse: object) -> list[object]:
    out = []
    for obj in objects:
        try:
            out.append(parse(obj.body))  # type: ignore[operator]
        except ManifestError as exc:  # validated at load time; a defect here must not stop the rest
            log.error("ignored %s %s/%s: %s", obj.kind, obj.namespace, obj.name, exc)
    return out


def service_index(state: MeshState) -> dict[tuple[str, str], dict[int, str]]:
    """``{(ns, name): {port: port name}}``, the shape the route tables take."""
    index: dict[tuple[str, str], dict[int, str]] = {}
    for obj in state.snapshot.objects("Service"):
        svc = state.service(obj.namespace, obj.name)
        if svc is not None:
            index[(svc.namespace, svc.name)] = {p.port: p.name for p in svc.ports}
    return index


def _upstream_protocol(protocol: str) -> UpstreamProtocol:
    """HTTP/2 for h2c/gRPC ports, HTTP/1.1 for ``http``; an undeclared port follows the downstream
    (Istio sets ``useDownstreamProtocol`` there; ``IS:releasenotes/notes/waypoint-auto-http2.yaml``)."""
    if protocol in H2C_PROTOCOLS:
        return UpstreamProtocol.HTTP2
    return UpstreamProtocol.HTTP1 if protocol else UpstreamProtocol.AUTO


@dataclass
class WaypointConfig:
    """Route tables and endpoint targets for one snapshot."""

    state: MeshState
    routes: RouteTables
    # Gateway API status of every route, keyed "Kind/ns/name": what an operator reads to learn why
    # a route does nothing or answers 500 (we write no status to an API server).
    statuses: dict[str, tuple[ParentStatus, ...]] = field(default_factory=dict)
    _targets: dict[ServiceRef, tuple[UpstreamTarget, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, state: MeshState) -> WaypointConfig:
        snap = state.snapshot
        http: list[HTTPRoute] = _parsed(snap.objects("HTTPRoute"), parse_httproute)  # type: ignore[assignment]
        grpc: list[GRPCRoute] = _parsed(snap.objects("GRPCRoute"), parse_grpcroute)  # type: ignore[assignment]
        grants: list[ReferenceGrant] = _parsed(
            snap.objects("ReferenceGrant"), parse_reference_grant
        )  # type: ignore[assignment]
        services = service_index(state)
        tables = RouteTables.build([*http, *grpc], services, grants)
        gateways = [(wp.namespace, wp.name) for wp in snap.waypoints]
        routes: list[HTTPRoute | GRPCRoute] = [*http, *grpc]
        statuses = {f"{r.kind}/{r.namespace}/{r.name}": route_status(r, services, grants, gateways) for r in routes}
        for name, parents in statuses.items():
            for parent in parents:
                for c in parent.conditions:
                    if c.status != "True":
                        log.warning("%s parent %s: %s=False %s: %s", name, parent.parent_ref.name, c.type,
                                    c.reason, c.message)
        return cls(state, tables, statuses)

    def status_dump(self) -> list[Mapping[str, Any]]:
        """Route statuses for the admin config dump, shaped like Gateway API ``status.parents``."""
        return [
            {
                "route": name,
                "parents": [
                    {
                        "parentRef": {"kind": p.parent_ref.kind, "name": p.parent_ref.name,
                                      "namespace": p.parent_ref.namespace, "port": p.parent_ref.port},
                        "conditions": {
                            c.type: {"status": c.status, "reason": c.reason, "message": c.message}
                            for c in p.conditions
                        },
                    }
                    for p in parents
                ],
            }
            for name, parents in sorted(self.statuses.items())
        ]

    def service(self, ref: ServiceRef) -> Service | None:
        return self.state.service(ref.namespace, ref.name)

    def protocol_of(self, svc: Service, port: int) -> str:
        sp = svc.port(port)
        return port_protocol(sp) if sp is not None else ""

    def endpoints(self, ref: ServiceRef) -> tuple[UpstreamTarget, ...]:
        """Ready endpoints of a service port as upstream targets (memoised for this snapshot)."""
        found = self._targets.get(ref)
        if found is None:
            found = self._compute_targets(ref)
            self._targets[ref] = found
        return found

    def _compute_targets(self, ref: ServiceRef) -> tuple[UpstreamTarget, ...]:
        svc = self.service(ref)
        if svc is None:
            return ()
        proto = _upstream_protocol(self.protocol_of(svc, ref.port))
        targets = []
        for ep in self.state.endpoints(svc, ref.port):
            identity = str(self.state.identity_of(ep.workload)) if self.state.is_ambient(ep.workload) else None
            targets.append(UpstreamTarget(ep.ip, ep.port, ref, proto, identity, workload=ep.workload))
        return tuple(targets)
