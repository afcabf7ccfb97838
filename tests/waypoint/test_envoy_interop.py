"""Interop with Envoy on both sides of our waypoint, sharing one mesh CA (``tests/support/envoy``).

* Envoy as the source-side HBONE originator (a ztunnel stand-in: one CONNECT ``VIP:port`` per
  connection, expecting the waypoint's SAN) into our waypoint;
* our waypoint re-originating to Envoy terminating CONNECT (``forward_to="authority"``, as the
  destination ztunnel dials the authority) in front of the backend pod (facts §2.4).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.envoy import EnvoyProcess, TestCA
from tests.support.envoy.configs import hbone_originate, hbone_terminate

from . import manifests as m
from .apps import EchoApp
from .conftest import IdentityProbe, MeshFactory

pytestmark = pytest.mark.timeout(90)
ENVOY_POD_IP, ENVOY_VIP = m.ip("12.40"), m.ip("13.40")


@pytest.fixture
def shared_ca(tmp_path: Path) -> tuple[TestCA, Path]:
    ca = TestCA(m.TD)
    ca_dir = tmp_path / "ca"
    ca.ca.save(ca_dir)  # the dev mesh loads the same root and signs with it
    return ca, ca_dir


async def _http_get(addr: tuple[str, int], path: str) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_envoy_originates_hbone_into_our_waypoint(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], shared_ca: tuple[TestCA, Path], tmp_path: Path
) -> None:
    ca, ca_dir = shared_ca
    await make_mesh(m.standard(), filters=[IdentityProbe()], ca_dir=ca_dir)
    certs = ca.write_cert_dir(tmp_path / "sleep-certs", m.CLIENT_ID)
    config = hbone_originate((m.ip("11.5"), 0), (m.WP_IP, 15008), f"{m.ECHO_VIP}:{m.HTTP_PORT}", certs,
                             m.WAYPOINT_ID)
    envoy = EnvoyProcess(config, tmp_path / "envoy", "originate")
    await asyncio.to_thread(envoy.start)
    try:
        listen = envoy.listener_address("originate")
        for i in range(3):
            response = await _http_get(listen, f"/from-envoy/{i}")
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
        seen = echo_apps["v1"].seen + echo_apps["v2"].seen
        assert sorted(s.path for s in seen) == [f"/from-envoy/{i}" for i in range(3)]
        assert {s.headers["x-probe-peer-identity"] for s in seen} == {m.CLIENT_ID}
        assert {s.headers["x-probe-authority"] for s in seen} == {f"{m.ECHO_VIP}:{m.HTTP_PORT}"}
    finally:
        await asyncio.to_thread(envoy.stop)


async def test_our_waypoint_originates_to_envoy_terminating(
    make_mesh: MeshFactory, shared_ca: tuple[TestCA, Path], tmp_path: Path
) -> None:
    ca, ca_dir = shared_ca
    envoy_id = m.spiffe("app", "envoyed")
    docs = m.standard(
        # On another node: our ztunnel leaves its 15008 to Envoy.
        m.pod("envoyed", ENVOY_POD_IP, sa="envoyed", ports=(m.APP_PORT,), node="envoy-node"),
        m.service("envoyed", ENVOY_VIP, [("http", m.HTTP_PORT, m.APP_PORT)]),
    )
    mesh = await make_mesh(docs, filters=[IdentityProbe()], ca_dir=ca_dir, node="dev")
    certs = ca.write_cert_dir(tmp_path / "envoyed-certs", envoy_id)
    envoy = EnvoyProcess(hbone_terminate((ENVOY_POD_IP, 15008), certs, "authority", trust_domain=m.TD),
                         tmp_path / "envoy", "terminate")
    app = await EchoApp("envoyed", ENVOY_POD_IP, m.APP_PORT).start()
    await asyncio.to_thread(envoy.start)
    try:
        async with mesh.client(m.CLIENT_IP) as client:
            for i in range(3):
                r = await client.post(f"http://{ENVOY_VIP}/via-envoy/{i}", content=b"z" * 5000)
                assert r.status_code == 200, r.text
                assert (r.json()["path"], r.json()["body_bytes"]) == (f"/via-envoy/{i}", 5000)
                assert r.json()["headers"]["x-probe-peer-identity"] == m.CLIENT_ID
        # The waypoint tunnelled to Envoy at the pod address, expecting the pod's SAN.
        keys = [k for k in mesh.waypoint("waypoint").pool._conns if k.dst == (ENVOY_POD_IP, 15008)]
        assert keys and {str(i) for i in keys[0].dst_identities} == {envoy_id}
    finally:
        await app.stop()
        await asyncio.to_thread(envoy.stop)
