"""The connection access log names both identities, as ztunnel's ``connection complete`` line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.wait import wait_for

from .mesh import CLIENT_IP, socks5_connect
from .test_e2e import App, exchange


async def test_connection_complete_logs_both_identities(make_role: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="waypoint.access")
    a = await make_role("node-a", "127.0.8.1")
    b = await make_role("node-b", "127.0.9.1")
    async with App(7) as app:
        rep, reader, writer = await socks5_connect(a.addresses["socks5"], "echo.default", 80, CLIENT_IP)
        assert rep == 0
        await asyncio.wait_for(exchange(reader, writer, 3), 10)
        writer.close()
        await wait_for(lambda: bool(app.received))
    await wait_for(lambda: not a.conns.live and not b.conns.live)
    lines = [r.getMessage() for r in caplog.records if r.name == "waypoint.access"]
    inbound = [line for line in lines if 'direction="inbound"' in line]
    outbound = [line for line in lines if 'direction="outbound"' in line]
    assert len(inbound) == 1 and len(outbound) == 1, lines
    for line in (inbound[0], outbound[0]):
        assert 'src.identity="spiffe://cluster.local/ns/default/sa/sleep"' in line
        assert 'dst.identity="spiffe://cluster.local/ns/default/sa/echo"' in line
        assert 'security="mutual_tls"' in line
    assert "bytes_sent=3 bytes_recv=7" in inbound[0]
