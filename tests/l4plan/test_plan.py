"""The outbound and inbound plans without sockets, case by case like ztunnel's
``build_request_*`` tests (ZT:src/proxy/outbound.rs tests; facts §2.3 and §1.4)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.mesh import objects as o
from waypoint.identity.spiffe import Identity
from waypoint.l4.plan import (
    NO_HEALTHY_UPSTREAM,
    OutboundPlan,
    PlanKind,
    RoundRobinPicker,
    plan_inbound,
    plan_outbound,
)
from waypoint.mesh.model import Workload
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.mesh.state import MeshState

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
WP_LABEL = "gateway.networking.k8s.io/gateway-name"


def world(*extra: dict[str, Any]) -> MeshState:
    docs = [
        o.namespace("amb", **AMBIENT),
        o.namespace("wpns", **AMBIENT, **{"istio.io/use-waypoint": "waypoint"}),
        o.namespace("plain"),
        o.namespace("wl", **AMBIENT),
        o.waypoint_gateway("waypoint", ns="wpns", address="127.0.250.1"),
        o.waypoint_gateway("wlwp", ns="wl", address="127.0.250.2", waypoint_for="workload"),
        o.waypoint_gateway("nowhere", ns="amb"),  # no address, no pods
        o.pod("client", "127.10.0.1", ns="amb", sa="client"),
        o.pod(
            "a1",
            "127.10.0.2",
            ns="amb",
            labels={"app": "a"},
            sa="a",
            ports=[{"name": "web", "containerPort": 8081}],
        ),
        o.pod(
            "a2",
            "127.10.0.3",
            ns="amb",
            labels={"app": "a"},
            sa="a",
            ports=[{"name": "web", "containerPort": 8082}],
        ),
        o.pod("p", "127.10.0.4", ns="plain", labels={"app": "p"}),
        o.pod("e", "127.10.0.5", ns="wpns", labels={"app": "e"}, sa="e"),
        o.pod("t", "127.10.0.6", ns="wl", labels={"app": "t", "istio.io/use-waypoint": "wlwp"}, sa="t"),
        o.pod("down", "127.10.0.7", ns="amb", labels={"app": "down"}, ready=False),
        o.pod("v6", "fd00::7", ns="amb", labels={"app": "v6"}),
        o.pod("x", "127.10.0.8", ns="amb", labels={"app": "x", "istio.io/use-waypoint": "nowhere"}),
        o.service(
            "a",
            "127.0.200.1",
            ns="amb",
            selector={"app": "a"},
            ports=[
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "named", "port": 81, "targetPort": "web"},
            ],
        ),
        o.service("p", "127.0.200.2", ns="plain", selector={"app": "p"}),
        o.service("e", "127.0.200.3", ns="wpns", selector={"app": "e"}),
        o.service("empty", "127.0.200.4", ns="amb", selector={"app": "nobody"}),
        o.service("t", "127.0.200.5", ns="wl", selector={"app": "t"}),
        o.service("headless", "None", ns="amb", selector={"app": "a"}),
        o.service("down", "127.0.200.6", ns="amb", selector={"app": "down"}),
        o.service(
            "direct",
            "127.0.200.7",
            ns="wpns",
            selector={"app": "e"},
            labels={"istio.io/use-waypoint": "none"},
        ),
        o.service(
            "viaplainwp",
            "127.0.200.8",
            ns="amb",
            selector={"app": "a"},
            labels={"istio.io/use-waypoint": "nowhere", "istio.io/waypoint-for": "service"},
        ),
        *extra,
    ]
    snap = snapshot_from_docs(docs)
    assert snap.problems == ()
    return MeshState(snap)


STATE = world()


def sid(ns: str, sa: str) -> Identity:
    return Identity("cluster.local", ns, sa)


def src(ip: str = "127.10.0.1", state: MeshState = STATE) -> Workload | None:
    return state.workload_by_ip(ip)


def out(
    dst: str | None,
    port: int,
    source: str | None = "127.10.0.1",
    hostname: str | None = None,
    state: MeshState = STATE,
    pick: RoundRobinPicker | None = None,
) -> OutboundPlan:
    return plan_outbound(
        state,
        src(source, state) if source else None,
        dst,
        port,
        hostname=hostname,
        pick=pick or RoundRobinPicker(),
    )


# (name, dst ip, port, source ip, hostname) -> (kind, next hop, authority, expected SANs, reason)
CASES: list[
    tuple[
        str,
        str | None,
        int,
        str | None,
        str | None,
        PlanKind,
        tuple[str, int] | None,
        str | None,
        tuple[Identity, ...],
        str,
    ]
] = [
    ("vip_no_waypoint_hbone_to_endpoint", "127.0.200.1", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.2", 15008), "127.10.0.2:8080", (sid("amb", "a"),), "direct"),
    ("vip_named_target_port", "127.0.200.1", 81, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.2", 15008), "127.10.0.2:8081", (sid("amb", "a"),), "direct"),
    ("vip_service_waypoint", "127.0.200.3", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.0.250.1", 15008), "127.0.200.3:80", (sid("wpns", "waypoint"),), "service waypoint"),
    ("vip_service_waypoint_unknown_port_still_waypoint", "127.0.200.3", 9999, "127.10.0.1", None,
     PlanKind.HBONE, ("127.0.250.1", 15008), "127.0.200.3:9999", (sid("wpns", "waypoint"),), "service waypoint"),
    ("vip_service_waypoint_unknown_source", "127.0.200.3", 80, None, None,
     PlanKind.HBONE, ("127.0.250.1", 15008), "127.0.200.3:80", (sid("wpns", "waypoint"),), "service waypoint"),
    ("vip_use_waypoint_none_overrides_namespace", "127.0.200.7", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.5", 15008), "127.10.0.5:8080", (sid("wpns", "e"),), "direct"),
    ("vip_port_not_in_service", "127.0.200.1", 9999, "127.10.0.1", None,
     PlanKind.REFUSE, None, None, (), NO_HEALTHY_UPSTREAM),
    ("vip_no_endpoints", "127.0.200.4", 80, "127.10.0.1", None,
     PlanKind.REFUSE, None, None, (), NO_HEALTHY_UPSTREAM),
    ("vip_only_unready_endpoints", "127.0.200.6", 80, "127.10.0.1", None,
     PlanKind.REFUSE, None, None, (), NO_HEALTHY_UPSTREAM),
    ("vip_out_of_mesh_tcp", "127.0.200.2", 80, "127.10.0.1", None,
     PlanKind.TCP, ("127.10.0.4", 8080), None, (), "out of mesh"),
    ("vip_service_with_workload_waypoint_goes_direct", "127.0.200.5", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.6", 15008), "127.10.0.6:8080", (sid("wl", "t"),), "direct"),
    ("vip_waypoint_without_address_refused", "127.0.200.8", 80, "127.10.0.1", None,
     PlanKind.REFUSE, None, None, (), "waypoint has no address"),
    ("pod_ip_ambient_direct", "127.10.0.2", 9000, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.2", 15008), "127.10.0.2:9000", (sid("amb", "a"),), "direct"),
    ("pod_ip_not_ready_still_direct", "127.10.0.7", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.7", 15008), "127.10.0.7:80", (sid("amb", "default"),), "direct"),
    ("pod_ip_out_of_mesh_tcp", "127.10.0.4", 8080, "127.10.0.1", None,
     PlanKind.TCP, ("127.10.0.4", 8080), None, (), "out of mesh"),
    ("pod_ip_service_waypoint_not_used_for_workload_traffic", "127.10.0.5", 8080, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.5", 15008), "127.10.0.5:8080", (sid("wpns", "e"),), "direct"),
    ("pod_ip_workload_waypoint", "127.10.0.6", 8080, "127.10.0.1", None,
     PlanKind.HBONE, ("127.0.250.2", 15008), "127.10.0.6:8080", (sid("wl", "wlwp"),), "workload waypoint"),
    ("pod_ip_workload_waypoint_unknown_source", "127.10.0.6", 8080, None, None,
     PlanKind.HBONE, ("127.0.250.2", 15008), "127.10.0.6:8080", (sid("wl", "wlwp"),), "workload waypoint"),
    ("pod_ip_from_its_waypoint_goes_direct", "127.10.0.6", 8080, "127.0.250.2", None,
     PlanKind.HBONE, ("127.10.0.6", 15008), "127.10.0.6:8080", (sid("wl", "t"),), "direct"),
    ("pod_ip_labelled_with_service_only_waypoint_goes_direct", "127.10.0.8", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("127.10.0.8", 15008), "127.10.0.8:80", (sid("amb", "default"),), "direct"),
    ("pod_ipv6_bracketed_authority", "fd00::7", 80, "127.10.0.1", None,
     PlanKind.HBONE, ("fd00::7", 15008), "[fd00::7]:80", (sid("amb", "default"),), "direct"),
    ("unknown_ip_passthrough", "192.0.2.1", 443, "127.10.0.1", None,
     PlanKind.PASSTHROUGH, ("192.0.2.1", 443), None, (), "unknown destination"),
    ("unknown_ip_unknown_source_passthrough", "192.0.2.1", 443, None, None,
     PlanKind.PASSTHROUGH, ("192.0.2.1", 443), None, (), "unknown destination"),
    ("waypoint_address_itself_is_not_ambient", "127.0.250.1", 15008, "127.10.0.1", None,
     PlanKind.TCP, ("127.0.250.1", 15008), None, (), "out of mesh"),
    ("hostname_short_in_client_namespace", None, 80, "127.10.0.1", "a",
     PlanKind.HBONE, ("127.10.0.2", 15008), "127.10.0.2:8080", (sid("amb", "a"),), "direct"),
    ("hostname_fqdn_with_waypoint_authority_is_vip", None, 80, "127.10.0.1", "e.wpns.svc.cluster.local",
     PlanKind.HBONE, ("127.0.250.1", 15008), "127.0.200.3:80", (sid("wpns", "waypoint"),), "service waypoint"),
    ("hostname_ns_form", None, 80, "127.10.0.1", "p.plain",
     PlanKind.TCP, ("127.10.0.4", 8080), None, (), "out of mesh"),
    ("hostname_unknown_passthrough_by_name", None, 443, "127.10.0.1", "example.com",
     PlanKind.PASSTHROUGH, ("example.com", 443), None, (), "unknown hostname"),
    ("hostname_short_wrong_namespace", None, 80, "127.10.0.4", "a",
     PlanKind.PASSTHROUGH, ("a", 80), None, (), "unknown hostname"),
    ("hostname_headless_service_endpoint", None, 80, "127.10.0.1", "headless",
     PlanKind.HBONE, ("127.10.0.2", 15008), "127.10.0.2:8080", (sid("amb", "a"),), "direct"),
    ("hostname_no_endpoints", None, 80, "127.10.0.1", "empty.amb.svc",
     PlanKind.REFUSE, None, None, (), NO_HEALTHY_UPSTREAM),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_build_request(case: tuple[Any, ...]) -> None:
    _, dst, port, source, hostname, kind, hop, authority, sans, reason = case
    plan = out(dst, port, source, hostname)
    assert (plan.kind, plan.next_hop, plan.authority, plan.expected_identities, plan.reason) == (
        kind,
        hop,
        authority,
        sans,
        reason,
    )
    if kind is PlanKind.REFUSE:
        assert plan.status == 503 and plan.refused


def test_service_waypoint_plan_labels_for_metrics() -> None:
    plan = out("127.0.200.3", 80)
    assert plan.via_waypoint is not None and plan.via_waypoint.name == "waypoint"
    assert plan.destination_service is not None and plan.destination_service.name == "e"
    # The connection reaches the waypoint (ztunnel's actual_destination_workload).
    assert plan.destination_workload is not None and plan.destination_workload.gateway_name == "waypoint"


def test_direct_plan_labels_for_metrics() -> None:
    plan = out("127.0.200.1", 80)
    assert (
        plan.destination_service is not None
        and plan.destination_service.hostname == "a.amb.svc.cluster.local"
    )
    assert plan.destination_workload is not None and plan.destination_workload.name == "a1"
    assert plan.via_waypoint is None
    pod_plan = out("127.10.0.2", 80)
    assert pod_plan.destination_service is None and pod_plan.destination_workload is not None


def test_round_robin_over_ready_endpoints_is_deterministic() -> None:
    pick = RoundRobinPicker()
    hops = [out("127.0.200.1", 80, pick=pick).next_hop for _ in range(4)]
    assert hops == [("127.10.0.2", 15008), ("127.10.0.3", 15008)] * 2
    authorities = [out("127.0.200.1", 81, pick=pick).authority for _ in range(2)]
    assert authorities == ["127.10.0.2:8081", "127.10.0.3:8082"]  # per-key counters, per-pod named port


def test_round_robin_across_waypoint_addresses() -> None:
    state = world(
        o.pod("wp-1", "127.10.1.1", ns="wl", sa="wlwp", labels={WP_LABEL: "wlwp2"}),
        o.pod("wp-2", "127.10.1.2", ns="wl", sa="wlwp", labels={WP_LABEL: "wlwp2"}),
        o.waypoint_gateway("wlwp2", ns="wl", waypoint_for="all"),
        o.pod("u", "127.10.0.9", ns="wl", labels={"istio.io/use-waypoint": "wlwp2"}),
    )
    pick = RoundRobinPicker()
    plans = [out("127.10.0.9", 80, state=state, pick=pick) for _ in range(3)]
    assert [p.next_hop for p in plans] == [
        ("127.10.1.1", 15008),
        ("127.10.1.2", 15008),
        ("127.10.1.1", 15008),
    ]
    assert [p.destination_workload.name for p in plans if p.destination_workload] == ["wp-1", "wp-2", "wp-1"]
    # The waypoint's own pod sending to the pod: same identity AND IP -> not back to the waypoint.
    back = out("127.10.0.9", 80, source="127.10.1.2", state=state)
    assert back.reason == "direct" and back.next_hop == ("127.10.0.9", 15008)


def test_source_with_waypoint_identity_but_other_ip_still_goes_via_waypoint() -> None:
    state = world(o.pod("imposter", "127.10.0.20", ns="wl", sa="wlwp"))
    plan = out("127.10.0.6", 8080, source="127.10.0.20", state=state)
    assert plan.reason == "workload waypoint"


def test_source_waypoint_does_not_skip_service_waypoint() -> None:
    # ztunnel checks check_from_waypoint only for workload waypoints; service traffic always
    # goes to the service's waypoint (the waypoint itself dials endpoints, not VIPs).
    plan = out("127.0.200.3", 80, source="127.0.250.1")
    assert plan.reason == "service waypoint"


# -- inbound --------------------------------------------------------------------------------------

PEER = sid("amb", "client")

INBOUND: list[tuple[str, str, str, int, tuple[str, int] | None, bool, str]] = [
    ("ok", "127.10.0.2", "127.10.0.2:8080", 200, ("127.10.0.2", 8080), False, ""),
    ("bad_authority_no_port", "127.10.0.2", "127.10.0.2", 400, None, False, "bad authority"),
    ("bad_authority_port", "127.10.0.2", "127.10.0.2:99999", 400, None, False, "bad authority"),
    ("bad_authority_v6_unbracketed", "127.10.0.2", "fd00::7:80", 400, None, False, "bad authority"),
    ("ip_mismatch", "127.10.0.2", "127.10.0.3:8080", 400, None, False, "IPMismatch"),
    ("vip_is_not_local", "127.10.0.2", "127.0.200.1:80", 400, None, False, "IPMismatch"),
    ("unknown_local_workload", "127.10.9.9", "127.10.9.9:80", 503, None, False, "unknown local workload"),
    ("v6_bracketed", "fd00::7", "[fd00::7]:80", 200, ("fd00::7", 80), False, ""),
    ("sandwich_local_is_targets_waypoint", "127.0.250.2", "127.10.0.6:8080", 200, ("127.0.250.2", 8080), True, ""),
    ("sandwich_service_waypoint", "127.0.250.1", "127.0.200.3:80", 200, ("127.0.250.1", 80), True, ""),
    ("other_waypoint_is_mismatch", "127.0.250.1", "127.10.0.6:8080", 400, None, False, "IPMismatch"),
    ("hostname_authority_local_service", "127.10.0.2", "a.amb.svc.cluster.local:80",
     200, ("127.10.0.2", 8080), False, ""),
    ("hostname_authority_named_port", "127.10.0.3", "a.amb.svc.cluster.local:81", 200, ("127.10.0.3", 8082), False, ""),
    ("hostname_authority_not_local_service", "127.10.0.2", "p.plain.svc.cluster.local:80",
     503, None, False, "no upstream"),
    ("hostname_authority_unknown_port", "127.10.0.2", "a.amb.svc.cluster.local:82", 503, None, False, "no upstream"),
]


@pytest.mark.parametrize("case", INBOUND, ids=[c[0] for c in INBOUND])
def test_inbound(case: tuple[Any, ...]) -> None:
    _, local, authority, status, upstream, sandwich, reason = case
    plan = plan_inbound(STATE, local, authority, PEER)
    assert (plan.status, plan.upstream, plan.sandwich) == (status, upstream, sandwich)
    assert plan.reason.startswith(reason)
    assert plan.peer_identity == PEER
    assert plan.accepted is (status == 200)
    if status == 200:
        assert plan.destination_workload is not None and local in plan.destination_workload.ips
