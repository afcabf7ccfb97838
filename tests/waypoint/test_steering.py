"""Which traffic the ztunnel steers to a waypoint, and what each hop sees (facts §2.2, §2.3, §2.4).

``istio.io/use-waypoint`` on a Namespace, Service or Pod (``none`` opts out), ``istio.io/use-
waypoint-namespace``, ``istio.io/waypoint-for``; the CONNECT to the waypoint carries the dialled
address as ``:authority`` and expects the waypoint's SAN; the destination ztunnel sees the
waypoint's identity while the waypoint's filters see the client's.
"""

from __future__ import annotations

import pytest

from . import manifests as m
from .apps import EchoApp
from .conftest import IdentityProbe, MeshFactory, RunningMesh, opened_connections

pytestmark = pytest.mark.timeout(60)
HTTP = [("http", m.HTTP_PORT, m.APP_PORT)]
PROBE = "x-probe-peer-identity"


def base(ns: m.Doc, *extra: m.Doc, wp_ns: str = "app", waypoint_for: str | None = None,
         allowed_from: str | None = None) -> list[m.Doc]:
    docs = [ns, m.waypoint("waypoint", m.WP_IP, ns=wp_ns, waypoint_for=waypoint_for, allowed_from=allowed_from),
            m.pod("sleep", m.CLIENT_IP),
            m.pod("echo-v1", m.V1_IP, app="echo", sa="echo", ports=(m.APP_PORT,)),
            m.pod("echo-v2", m.V2_IP, app="echo2", sa="echo", ports=(m.APP_PORT,))]
    if wp_ns != "app":
        docs.append(m.namespace(wp_ns))
    return docs + list(extra)


async def via_waypoint(mesh: RunningMesh, app: EchoApp, url: str) -> bool:
    """One request from sleep; whether the waypoint's filters handled it."""
    before = len(app.seen)
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text)
    assert len(app.seen) == before + 1  # exactly once: nothing re-sent through the waypoint again
    probe = app.seen[-1].headers.get(PROBE)
    assert probe in (None, m.CLIENT_ID), probe
    return probe is not None


async def test_namespace_label_and_service_opt_out(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(base(
        m.namespace("app", waypoint="waypoint"),
        m.service("echo", m.ECHO_VIP, HTTP, app="echo"),
        m.service("echo2", m.V2_VIP, HTTP, app="echo2", labels={"istio.io/use-waypoint": "none"}),
    ), filters=[IdentityProbe()])
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/")
    assert not await via_waypoint(mesh, echo_apps["v2"], f"http://{m.V2_VIP}/")  # opted out
    assert not await via_waypoint(mesh, echo_apps["v1"], f"http://{m.V1_IP}:{m.APP_PORT}/")  # pod: waypoint-for service


async def test_service_label_only(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(base(
        m.namespace("app"),
        m.service("echo", m.ECHO_VIP, HTTP, app="echo", labels={"istio.io/use-waypoint": "waypoint"}),
        m.service("echo2", m.V2_VIP, HTTP, app="echo2"),
    ), filters=[IdentityProbe()])
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/")
    assert not await via_waypoint(mesh, echo_apps["v2"], f"http://{m.V2_VIP}/")


@pytest.mark.parametrize("waypoint_for", ["workload", "all"])
async def test_pod_label_workload_waypoint(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp],
                                           waypoint_for: str) -> None:
    docs = base(m.namespace("app"), m.service("echo", m.ECHO_VIP, HTTP, app="echo"), waypoint_for=waypoint_for)
    docs[2 + 1]["metadata"]["labels"]["istio.io/use-waypoint"] = "waypoint"  # pod echo-v1
    mesh = await make_mesh(docs, filters=[IdentityProbe()])
    # Workload-addressed: the pod's waypoint, with :authority the pod address dialled; the waypoint
    # re-originates straight to the pod, and is not sent back to itself (check_from_waypoint).
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.V1_IP}:{m.APP_PORT}/")
    assert echo_apps["v1"].seen[-1].headers["x-probe-authority"] == f"{m.V1_IP}:{m.APP_PORT}"
    # Service-addressed: the service carries no label, so no waypoint for it.
    assert not await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/")
    assert not await via_waypoint(mesh, echo_apps["v2"], f"http://{m.V2_IP}:{m.APP_PORT}/")


@pytest.mark.parametrize("waypoint_for,service_steered,pod_steered", [
    ("service", True, False), ("workload", False, True), ("all", True, True), ("none", False, False),
])
async def test_waypoint_for(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], waypoint_for: str,
                            service_steered: bool, pod_steered: bool) -> None:
    mesh = await make_mesh(base(
        m.namespace("app", waypoint="waypoint"), m.service("echo", m.ECHO_VIP, HTTP, app="echo"),
        waypoint_for=waypoint_for,
    ), filters=[IdentityProbe()])
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/") is service_steered
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.V1_IP}:{m.APP_PORT}/") is pod_steered


async def test_use_waypoint_namespace(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(base(
        m.namespace("app", waypoint="waypoint", waypoint_ns="infra"),
        m.service("echo", m.ECHO_VIP, HTTP, app="echo"),
        wp_ns="infra", allowed_from="All",
    ), filters=[IdentityProbe()])
    assert await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/")
    assert ("infra", "waypoint") in mesh.dev.waypoints


async def test_cross_namespace_waypoint_needs_allowed_routes(make_mesh: MeshFactory,
                                                             echo_apps: dict[str, EchoApp]) -> None:
    """allowedRoutes defaults to Same: a waypoint in another namespace does not take the traffic."""
    mesh = await make_mesh(base(
        m.namespace("app", waypoint="waypoint", waypoint_ns="infra"),
        m.service("echo", m.ECHO_VIP, HTTP, app="echo"),
        wp_ns="infra",
    ), filters=[IdentityProbe()])
    assert not await via_waypoint(mesh, echo_apps["v1"], f"http://{m.ECHO_VIP}/")


async def test_identities_and_authority_on_each_hop(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(m.standard(), filters=[IdentityProbe()])
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{m.ECHO_VIP}/who")
    assert r.status_code == 200
    seen = echo_apps["v1"].seen[-1]
    # At the waypoint: the client's identity and address; :authority is the VIP:port dialled.
    assert seen.headers[PROBE] == m.CLIENT_ID and seen.headers["x-probe-peer-address"] == m.CLIENT_IP
    assert seen.headers["x-probe-authority"] == f"{m.ECHO_VIP}:{m.HTTP_PORT}"
    # The source ztunnel dialled the waypoint expecting only the waypoint's SAN.
    keys = list(mesh.dev.ztunnel.pool._conns)
    to_waypoint = [k for k in keys if k.dst == (m.WP_IP, 15008)]
    assert to_waypoint and {str(i) for i in to_waypoint[0].dst_identities} == {m.WAYPOINT_ID}
    assert str(to_waypoint[0].src_identity) == m.CLIENT_ID
    # The destination ztunnel saw the waypoint's identity, and the app sees the waypoint's address.
    inbound = [c for c in opened_connections(mesh, "destination") if c["destination_workload"] == "echo-v1"]
    assert inbound and {c["source_principal"] for c in inbound} == {m.WAYPOINT_ID}
    assert seen.peer == m.WP_IP
    source_side = [c for c in opened_connections(mesh, "source") if c["source_principal"] == m.CLIENT_ID]
    assert source_side and source_side[0]["destination_principal"] == m.WAYPOINT_ID
