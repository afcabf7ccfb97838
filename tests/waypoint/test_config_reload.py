"""Bad config while running: an invalid route is rejected with a message naming the file and the
field, and the last good version keeps serving (``waypoint.mesh.folder``: a half-saved edit must
not take a service down); a fixed route then applies."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.wait import wait_for

from . import manifests as m
from .apps import EchoApp
from .conftest import MeshFactory

pytestmark = pytest.mark.timeout(60)


def route(path_type: str, backend: str) -> m.Doc:
    return m.http_route("canary", "echo", [{
        "matches": [{"path": {"type": path_type, "value": "/canary"}}],
        "backendRefs": [m.backend_ref(backend, m.HTTP_PORT)],
    }])


async def test_invalid_route_rejected_while_last_good_serves(make_mesh: MeshFactory,
                                                             echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(m.standard())
    m.write(mesh.folder, [route("PathPrefix", "echo-v2")], "route.yaml")
    watcher = asyncio.get_running_loop().create_task(mesh.dev.watch())
    try:
        async with mesh.client(m.CLIENT_IP) as client:
            async def pod_for(path: str) -> str:
                r = await client.get(f"http://{m.ECHO_VIP}{path}")
                assert r.status_code == 200
                return r.headers["x-pod"]

            await wait_for(lambda: bool(mesh.dev.source.snapshot.objects("HTTPRoute")), what="route loaded")
            assert {await pod_for("/canary") for _ in range(4)} == {"echo-v2"}

            m.write(mesh.folder, [route("Bogus", "echo-v1")], "route.yaml")
            await wait_for(lambda: bool(mesh.dev.source.problems), what="the bad route reported")
            (problem,) = mesh.dev.source.problems
            assert problem.file.endswith("route.yaml") and problem.kind == "HTTPRoute"
            assert problem.field == "spec.rules[0].matches[0].path.type", problem
            assert "Bogus" in problem.message or "PathPrefix" in problem.message, problem.message
            assert "route.yaml" in problem.describe() and "spec.rules[0].matches[0].path.type" in problem.describe()
            assert {await pod_for("/canary") for _ in range(4)} == {"echo-v2"}  # last good version

            m.write(mesh.folder, [route("Exact", "echo-mirror")], "route.yaml")
            await wait_for(lambda: not mesh.dev.source.problems, what="the fixed route loaded")
            await asyncio.sleep(0)  # the waypoint follows in the same handler
            assert await pod_for("/canary") == "mirror"
    finally:
        watcher.cancel()
