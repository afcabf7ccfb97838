"""A dev mesh per test: the folder's pods get a ztunnel, each waypoint Gateway a waypoint, all in-process.

Listeners live on 127.N.11.1 with port 0 (parallel helpers never collide); pods' apps are
started by the tests on their 127.N.12.x addresses (see manifests.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from waypoint.devmesh.mesh import DevMesh, DevSettings
from waypoint.l7.filter import Filter
from waypoint.roles.waypoint import WaypointRole

from . import manifests as m
from .apps import EchoApp
from .clients import Address, http_client

MESH_IP = m.ip("11.1")


@dataclass
class RunningMesh:
    dev: DevMesh
    folder: Path

    @property
    def socks(self) -> Address:
        return self.dev.ztunnel.addresses["socks5"]  # type: ignore[return-value]

    def waypoint(self, name: str, ns: str = "app") -> WaypointRole:
        return self.dev.waypoints[(ns, name)]

    def client(self, source_ip: str, **kw: Any) -> httpx.AsyncClient:
        return http_client(self.socks, source_ip, **kw)

    def write(self, docs: Iterable[m.Doc]) -> None:
        m.write(self.folder, docs)

    async def reload(self) -> None:
        """Apply the folder now (what the watcher does on its next poll), without waiting for it."""
        changed = self.dev.source.poll()
        if changed is not None:
            await self.dev.apply(changed)


MeshFactory = Callable[..., Awaitable[RunningMesh]]


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    meshes: list[DevMesh] = []

    async def make(docs: Sequence[m.Doc], *, filters: Sequence[Filter] = (), **settings: Any) -> RunningMesh:
        folder = m.write(tmp_path / f"mesh{len(meshes)}", docs)
        listen = (MESH_IP, 0)
        dev = DevMesh(
            DevSettings(config=folder, socks5=listen, outbound=None, inbound_plaintext=None, readiness=listen,
                        metrics=listen, admin=listen, keepalive_s=2.0, ping_timeout_s=4.0, **settings),
            waypoint_filters=filters,
        )
        await dev.start()
        meshes.append(dev)
        return RunningMesh(dev, folder)

    yield make
    for dev in meshes:
        with contextlib.suppress(Exception):
            await dev.stop(0.5)


class IdentityProbe(Filter):
    """A test filter: tells the backend who the waypoint's filters think the client is."""

    name = "identity-probe"

    def on_request_headers(self, ctx: Any, head: Any, end_stream: bool) -> Any:
        head.headers.append((b"x-probe-peer-identity", (ctx.peer_identity or "-").encode()))
        head.headers.append((b"x-probe-peer-address", (ctx.peer_address or ("-",))[0].encode()))
        dest = ctx.info.destination
        head.headers.append((b"x-probe-authority", (f"{dest[0]}:{dest[1]}" if dest else "-").encode()))
        return super().on_request_headers(ctx, head, end_stream)


@pytest.fixture
async def echo_apps() -> AsyncIterator[dict[str, EchoApp]]:
    apps = {
        "v1": await EchoApp("echo-v1", m.V1_IP, m.APP_PORT).start(),
        "v2": await EchoApp("echo-v2", m.V2_IP, m.APP_PORT).start(),
        "mirror": await EchoApp("mirror", m.MIRROR_IP, m.APP_PORT).start(),
    }
    yield apps
    for app in apps.values():
        await app.stop()


def opened_connections(mesh: RunningMesh, reporter: str) -> list[dict[str, str]]:
    """Label sets of the ztunnel's ``istio_tcp_connections_opened_total`` samples for ``reporter``."""
    out = []
    for family in mesh.dev.ztunnel.registry.collect():
        for sample in family.samples:
            if sample.name == "istio_tcp_connections_opened_total" and sample.labels.get("reporter") == reporter:
                out.extend([dict(sample.labels)] * int(sample.value))
    return out
