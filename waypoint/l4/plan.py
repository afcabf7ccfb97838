"""Where a connection goes: the outbound and inbound decisions, with no I/O.

*Plan, then act* (STYLE.md, ztunnel): :func:`plan_outbound` is ztunnel's ``build_request``
(facts §2.3; ``ZT:src/proxy/outbound.rs`` ``build_request`` L589-780) and :func:`plan_inbound`
is the destination check of its HBONE server (facts §1.4 "Read by the ztunnel server";
``ZT:src/proxy/inbound.rs`` ``build_inbound_request`` / ``validate_destination``). Both return
values; the role performs them (dial, tunnel, splice) and turns a refusal into the status or
SOCKS reply it stands for.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from waypoint.hbone.headers import format_authority, parse_authority
from waypoint.identity.spiffe import Identity
from waypoint.mesh.model import HBONE_PORT, Service, Waypoint, Workload
from waypoint.mesh.state import MeshState, resolve_target_port

T = TypeVar("T")
NO_HEALTHY_UPSTREAM = "no healthy upstream"


class Picker(Protocol):
    """Chooses one of ``candidates`` (never empty) for the balancing group ``key``."""

    def __call__(self, key: Hashable, candidates: Sequence[T]) -> T: ...


class RoundRobinPicker:
    """Deterministic round robin per key (a service port, a waypoint). Not thread-safe.

    ztunnel picks randomly among healthy endpoints; round robin is as fair and makes tests and
    weight checks reproducible. Counters survive snapshot changes (keys are names, not objects).
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}

    def __call__(self, key: Hashable, candidates: Sequence[T]) -> T:
        i = self._next.get(key, 0)
        self._next[key] = i + 1
        return candidates[i % len(candidates)]


class PlanKind(Enum):
    HBONE = "hbone"  # mTLS HTTP/2 CONNECT to next_hop (port 15008) with ``authority``
    TCP = "tcp"  # plain TCP to next_hop: a known workload outside the mesh
    PASSTHROUGH = "passthrough"  # plain TCP to the original destination: not a mesh address
    REFUSE = "refuse"  # do not connect; ``status``/``reason`` say why


@dataclass(frozen=True, slots=True)
class OutboundPlan:
    kind: PlanKind
    # Where the TCP connection goes: waypoint:15008, pod:15008, pod:target port, or the original
    # destination (a hostname only for a passthrough of an unresolved name). None when refused.
    next_hop: tuple[str, int] | None = None
    # HBONE ``:authority``: original VIP:port via a waypoint, else pod_ip:target_port. None for TCP.
    authority: str | None = None
    # SPIFFE IDs the next hop's certificate may present (HBONE only): the waypoint's or the pod's.
    expected_identities: tuple[Identity, ...] = ()
    # The workload the connection reaches (the waypoint's workload when via a waypoint, as
    # ztunnel's ``actual_destination_workload``) and the service that was dialled, for metrics.
    destination_workload: Workload | None = None
    destination_service: Service | None = None
    via_waypoint: Waypoint | None = None
    reason: str = ""  # why: "service waypoint", "workload waypoint", "direct", NO_HEALTHY_UPSTREAM...
    status: int = 0  # REFUSE only: the HTTP status this is (503)

    @property
    def refused(self) -> bool:
        return self.kind is PlanKind.REFUSE


def plan_outbound(
    state: MeshState,
    source: Workload | None,
    dst_ip: str | None,
    dst_port: int,
    *,
    hostname: str | None = None,
    pick: Picker,
) -> OutboundPlan:
    """Decide how to reach ``dst_ip:dst_port`` (or ``hostname:dst_port``, SOCKS5 by name) from ``source``.

    ``source`` is the workload at the connection's source IP, ``None`` when unknown (the caller
    decides whether to allow that). Steps follow ``build_request``: service VIP with a waypoint →
    the waypoint; else an endpoint; a workload waypoint for workload-addressed traffic unless the
    source is that waypoint; HBONE to enrolled pods, TCP to others, passthrough for the unknown.
    """
    service: Service | None = None
    if hostname is not None:
        service = state.service_by_name(hostname, source.namespace if source else "default")
        if service is None and dst_ip is None:
            return OutboundPlan(PlanKind.PASSTHROUGH, (hostname, dst_port), reason="unknown hostname")
        if service is not None and dst_ip is None and service.vips:
            dst_ip = service.vips[0]
    elif dst_ip is not None:
        service = state.service_by_vip(dst_ip)
    if dst_ip is None and service is None:  # no name and no address: nothing to plan
        return _refuse(400, "no destination")

    if service is not None:
        target = format_authority(dst_ip, dst_port) if dst_ip else f"{service.hostname}:{dst_port}"
        waypoint = state.waypoint_for_service(service)
        if waypoint is not None:
            return _via_waypoint(state, waypoint, target, service, pick, "service waypoint")
        endpoints = state.endpoints(service, dst_port)
        if not endpoints:  # ztunnel: svc_addressed and no upstream -> NoHealthyUpstream
            return OutboundPlan(
                PlanKind.REFUSE, destination_service=service, reason=NO_HEALTHY_UPSTREAM, status=503
            )
        ep = pick(("service", service.namespace, service.name, dst_port), endpoints)
        workload, ip, port = ep.workload, ep.ip, ep.port
    else:
        assert dst_ip is not None
        found = state.workload_by_ip(dst_ip)
        if found is None:
            return OutboundPlan(PlanKind.PASSTHROUGH, (dst_ip, dst_port), reason="unknown destination")
        workload, ip, port = found, dst_ip, dst_port
        waypoint = state.waypoint_for_workload(workload)
        if waypoint is not None and not state.is_from_waypoint(source, waypoint):
            target = format_authority(dst_ip, dst_port)
            return _via_waypoint(state, waypoint, target, None, pick, "workload waypoint")

    if state.is_ambient(workload):
        return OutboundPlan(
            PlanKind.HBONE,
            (ip, HBONE_PORT),
            authority=format_authority(ip, port),
            expected_identities=(state.identity_of(workload),),
            destination_workload=workload,
            destination_service=service,
            reason="direct",
        )
    return OutboundPlan(
        PlanKind.TCP,
        (ip, port),
        destination_workload=workload,
        destination_service=service,
        reason="out of mesh",
    )


def _via_waypoint(
    state: MeshState, waypoint: Waypoint, authority: str, service: Service | None, pick: Picker, reason: str
) -> OutboundPlan:
    addresses = state.waypoint_addresses(waypoint)
    if not addresses:  # ztunnel: UnknownWaypoint; the connection fails
        return OutboundPlan(
            PlanKind.REFUSE,
            destination_service=service,
            via_waypoint=waypoint,
            reason="waypoint has no address",
            status=503,
        )
    address = pick(("waypoint", waypoint.namespace, waypoint.name), addresses)
    workloads = state.waypoint_workloads(waypoint)
    reached = next((w for w in workloads if address in w.ips), workloads[0] if workloads else None)
    return OutboundPlan(
        PlanKind.HBONE,
        (address, HBONE_PORT),
        authority=authority,
        expected_identities=state.waypoint_identities(waypoint),
        destination_workload=reached,
        destination_service=service,
        via_waypoint=waypoint,
        reason=reason,
    )


def _refuse(status: int, reason: str) -> OutboundPlan:
    return OutboundPlan(PlanKind.REFUSE, reason=reason, status=status)


# -- inbound ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboundPlan:
    """What the HBONE server does with one CONNECT: answer ``status``, and if 200 dial ``upstream``."""

    status: int  # 200 to proceed (sent once upstream is connected); 400 / 503 refusals
    reason: str = ""  # refusal reason for logs and the refusal metric
    upstream: tuple[str, int] | None = None  # plain TCP to the local app (pod_ip, port)
    target: tuple[str, int] | None = None  # the parsed :authority (host, port)
    destination_workload: Workload | None = None  # the local workload
    peer_identity: Identity | None = None  # the TLS peer, as given (policy input)
    sandwich: bool = False  # the local workload is the target's waypoint (authority is not local)

    @property
    def accepted(self) -> bool:
        return self.status == 200


def plan_inbound(
    state: MeshState, local_ip: str, authority: str, peer_identity: Identity | None
) -> InboundPlan:
    """Validate a CONNECT arriving at ``local_ip:15008`` (facts §1.4): 400 bad authority or IP
    mismatch, 503 unknown local workload or unknown hostname/port, else connect ``pod_ip:port``.
    """
    try:
        parsed = parse_authority(authority)
    except ValueError as e:
        return InboundPlan(400, f"bad authority: {e}", peer_identity=peer_identity)
    target = (parsed.host, parsed.port)
    local = state.workload_by_ip(local_ip)
    if local is None:
        return InboundPlan(
            503, f"unknown local workload {local_ip}", target=target, peer_identity=peer_identity
        )
    if not parsed.is_ip:  # double-HBONE style <service hostname>:<service port>
        return _inbound_by_hostname(state, local, local_ip, parsed.host, parsed.port, peer_identity)
    if parsed.host != local_ip:
        if _is_targets_waypoint(state, local, parsed.host):
            return InboundPlan(200, "", (local_ip, parsed.port), target, local, peer_identity, sandwich=True)
        return InboundPlan(
            400,
            f"IPMismatch: authority {parsed.host} is not {local_ip}",
            target=target,
            destination_workload=local,
            peer_identity=peer_identity,
        )
    return InboundPlan(200, "", (local_ip, parsed.port), target, local, peer_identity)


def _is_targets_waypoint(state: MeshState, local: Workload, target_ip: str) -> bool:
    """ztunnel's "waypoint sandwich" exception: the local workload is the target's waypoint."""
    if not local.gateway_name:
        return False
    service = state.service_by_vip(target_ip)
    if service is not None:
        wp = state.waypoint_for_service(service)
    else:
        workload = state.workload_by_ip(target_ip)
        wp = state.waypoint_for_workload(workload) if workload is not None else None
    return wp is not None and wp.namespace == local.namespace and wp.name == local.gateway_name


def _inbound_by_hostname(
    state: MeshState, local: Workload, local_ip: str, host: str, port: int, peer: Identity | None
) -> InboundPlan:
    service = state.service_by_name(host, local.namespace)
    sp = service.port(port) if service is not None else None
    target_port = resolve_target_port(sp, local) if sp is not None else None
    if service is None or target_port is None or service not in state.services_of(local):
        return InboundPlan(
            503,
            f"no upstream for {host}:{port}",
            target=(host, port),
            destination_workload=local,
            peer_identity=peer,
        )
    return InboundPlan(200, "", (local_ip, target_port), (host, port), local, peer)
