"""The loopback HBONE pair several test modules share: server and pool on real mutual TLS, and
a check that each test leaves no socket or task behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.hbone.test_tls_loopback import Mesh, open_sockets, start_mesh, until


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    fds = open_sockets()
    m = await start_mesh()
    yield m
    await m.pool.close()
    await m.server.close(grace_s=1.0)
    await until(lambda: open_sockets() <= fds)
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
