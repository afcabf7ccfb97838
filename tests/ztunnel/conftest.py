"""Two in-process ztunnels (node-a: client pods, node-b: server pods) sharing a dev CA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from waypoint.identity.certs import DevCertificateProvider
from waypoint.mesh.folder import FolderSource
from waypoint.roles.ztunnel import ZtunnelRole, ZtunnelSettings
from waypoint.testing.certs import dev_ca

from .mesh import write_mesh


def settings(node: str | None, host: str, **kw: object) -> ZtunnelSettings:
    base = ZtunnelSettings(
        node=node, outbound=(host, 0), socks5=(host, 0), inbound_plaintext=(host, 0),
        readiness=(host, 0), metrics=(host, 0), admin=(host, 0),
        keepalive_s=0.5, ping_timeout_s=1.0, connect_timeout_s=3.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


Factory = Callable[..., "asyncio.Future[ZtunnelRole]"]


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:
    return write_mesh(tmp_path / "mesh")


@pytest.fixture
async def make_role(mesh_dir: Path) -> AsyncIterator[Callable[..., object]]:
    roles: list[ZtunnelRole] = []
    provider = DevCertificateProvider(dev_ca())

    async def make(node: str | None, host: str, **kw: object) -> ZtunnelRole:
        snapshot = FolderSource(mesh_dir).reload()
        role = ZtunnelRole(settings(node, host, **kw), snapshot, provider)
        await role.start()
        roles.append(role)
        return role

    yield make
    for role in roles:
        await role.stop(grace_s=1.0)
