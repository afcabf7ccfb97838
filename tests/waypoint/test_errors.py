"""What the waypoint answers when things go wrong, worded as Envoy does, and the headers it adds
(Envoy ``conn_manager_utility.cc`` mutateRequestHeaders; router local replies)."""

from __future__ import annotations

import re

import pytest

from . import manifests as m
from .apps import EchoApp
from .clients import socks5_open
from .conftest import MeshFactory

pytestmark = pytest.mark.timeout(60)
EMPTY_VIP, DOWN_IP, DOWN_VIP = m.ip("13.30"), m.ip("12.30"), m.ip("13.31")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HTTP = [("http", m.HTTP_PORT, m.APP_PORT)]


def docs() -> list[m.Doc]:
    return m.standard(
        m.service("empty", EMPTY_VIP, HTTP, selector={"app": "nothing"}),
        m.pod("down", DOWN_IP, ports=(m.APP_PORT,)),  # its app never listens
        m.service("down", DOWN_VIP, HTTP),
    )


async def test_upstream_failures(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(docs())
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{EMPTY_VIP}/")  # no endpoint at all
        assert (r.status_code, r.text) == (503, "no healthy upstream")
        r = await client.get(f"http://{DOWN_VIP}/")  # the destination ztunnel cannot dial the app
        assert r.status_code == 503
        assert r.text.startswith("upstream connect error or disconnect/reset before headers. "), r.text
        r = await client.get(f"http://{m.V1_VIP}/reset")  # the app closes without answering
        assert r.status_code == 503
        assert r.text.startswith("upstream connect error or disconnect/reset before headers. "), r.text
        r = await client.get(f"http://{m.V1_VIP}/fine")  # and the next request is fine
        assert r.status_code == 200


async def test_forwarded_headers_and_request_id(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(docs())
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{m.V1_VIP}/h")
        seen = r.json()["headers"]
        # The client's address (the downstream remote address, from the tunnel's client) is appended.
        assert seen["x-forwarded-for"] == m.CLIENT_IP
        assert seen["x-forwarded-proto"] == "http"
        assert UUID.match(seen["x-request-id"]), seen["x-request-id"]
        r = await client.get(f"http://{m.V1_VIP}/h", headers={
            "x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "x-request-id": "abc-123"})
        seen = r.json()["headers"]
        assert [p.strip() for p in seen["x-forwarded-for"].split(",")] == ["203.0.113.7", m.CLIENT_IP]
        assert seen["x-request-id"] == "abc-123"  # kept: the request comes from inside the mesh
        ids = set()
        for _ in range(3):
            ids.add((await client.get(f"http://{m.V1_VIP}/h")).json()["headers"]["x-request-id"])
        assert len(ids) == 3


async def test_malformed_request_gets_400_and_the_hbone_connection_lives_on(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    mesh = await make_mesh(docs())
    pool = mesh.dev.ztunnel.pool
    reader, writer = await socks5_open(mesh.socks, m.V1_VIP, m.HTTP_PORT, m.CLIENT_IP)
    writer.write(b"GET /ok HTTP/1.1\r\nhost: a\r\nthis line has no colon\r\n\r\n")
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    writer.close()
    opened = pool.connections_opened
    # A new tunnel (a new CONNECT stream) to the same waypoint rides the same HBONE connection.
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{m.V1_VIP}/after")
    assert r.status_code == 200 and r.json()["path"] == "/after"
    assert pool.connections_opened == opened
    assert mesh.waypoint("waypoint").pool.connections_opened >= 1
    assert [s.path for s in echo_apps["v1"].seen] == ["/after"]  # the bad one never reached the app
