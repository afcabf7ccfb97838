"""Upgrade: after the 101 the connection is an opaque byte relay (Istio enables websocket upgrades)."""

from __future__ import annotations

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.l7.helpers import SVC, run_proxy
from waypoint.l7.upstream import UpstreamTarget


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_websocket_echo_through_proxy() -> None:
    async with serve(_echo, "127.0.4.5", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        target = UpstreamTarget("127.0.4.5", port, SVC)
        async with run_proxy({SVC: [target]}) as proxy, connect(f"ws://127.0.4.1:{proxy.port}/ws") as ws:
            messages: list[str | bytes] = ["hello", b"\x00binary" * 1000, "x" * 200_000]
            for message in messages:
                await ws.send(message)
                assert await ws.recv() == message
