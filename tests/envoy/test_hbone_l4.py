"""Envoy → Envoy HBONE carries TCP bytes exactly; the originator enforces the peer's exact SAN.

Proves the harness in ``tests/support/envoy`` (configs from envoy-peer.md "Configurations that
worked"), so interop tests can trust it as the independent peer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.envoy.conftest import Issue
from tests.support.envoy import EnvoyProcess, hbone_originate, hbone_terminate
from tests.support.envoy.backends import start_tcp_echo
from tests.support.envoy.configs import Config

SERVER_IP = "127.0.7.3"
CLIENT_IP = "127.0.7.1"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    server = await start_tcp_echo(SERVER_IP)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _originate_to_echo(echo_port: int, issue: Issue) -> Config:
    """The client-side Envoy: a TCP listener tunnelling to the echo server through SERVER_IP:15008,
    expecting the server to prove SERVER_ID."""
    return hbone_originate(
        (CLIENT_IP, 0), (SERVER_IP, 15008), f"{SERVER_IP}:{echo_port}", issue("default", "client"), SERVER_ID
    )


async def _round_trip(addr: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(payload)
    await writer.drain()
    received = bytearray()
    try:
        while len(received) < len(payload):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass  # a refused tunnel: Envoy closes the accepted connection, sometimes with a reset
    writer.close()
    return bytes(received)


@pytest.mark.parametrize("forward", ["authority", "fixed"])
async def test_envoy_originate_to_envoy_terminate_carries_bytes_exactly(
    forward: str, echo_server: int, issue: Issue, tmp_path: Path
) -> None:
    target = (SERVER_IP, echo_server)
    terminate = hbone_terminate(
        (SERVER_IP, 15008), issue("default", "server"), "authority" if forward == "authority" else target
    )
    originate = _originate_to_echo(echo_server, issue)
    with (
        EnvoyProcess(terminate, tmp_path, "terminate") as server,
        EnvoyProcess(originate, tmp_path, "originate") as client,
    ):
        entry = client.listener_address("originate")
        payloads = [os.urandom(1 << 20), b"x", os.urandom(70_000)]
        results = await asyncio.gather(*(_round_trip(entry, p) for p in payloads))
        assert results == payloads
        # Several TCP connections share one HBONE connection, one CONNECT stream each (envoy-peer.md).
        assert client.stat("cluster.hbone.upstream_cx_total") == 1
        assert client.stat("cluster.hbone.upstream_rq_total") == 3
        server.wait_stat("http.connect_terminate.downstream_rq_total", lambda n: n == 3)
        assert server.stat("listener.127.0.7.3_15008.ssl.versions.TLSv1.3") == 1


async def test_envoy_originate_refuses_a_peer_with_another_identity(
    echo_server: int, issue: Issue, tmp_path: Path
) -> None:
    # facts §1.2 client side: the server's URI SAN must equal an expected identity.
    terminate = hbone_terminate((SERVER_IP, 15008), issue("default", "impostor"), "authority")
    originate = _originate_to_echo(echo_server, issue)
    with (
        EnvoyProcess(terminate, tmp_path, "terminate"),
        EnvoyProcess(originate, tmp_path, "originate") as client,
    ):
        assert await _round_trip(client.listener_address("originate"), b"hello") == b""
        client.wait_stat("cluster.hbone.ssl.fail_verify_san", lambda n: n >= 1)
