"""Interop smoke test: our HBONE client pool against the real Envoy 1.40 terminating HBONE
(envoy-peer.md "Configurations that worked", destination side)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from tests.support.envoy.backends import start_tcp_echo
from tests.support.envoy.certs import TestCA
from tests.support.envoy.configs import hbone_terminate
from tests.support.envoy.process import EnvoyProcess
from waypoint.errors import TunnelError
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.identity.certs import load_istio_layout
from waypoint.identity.spiffe import Identity

ENVOY_IP, ECHO_IP = "127.0.3.20", "127.0.3.21"


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True


async def test_tunnel_through_envoy_terminate(tmp_path: Path) -> None:
    ca = TestCA()
    server_id, client_id = ca.spiffe_id("ns1", "envoy"), ca.spiffe_id("ns2", "client")
    envoy_certs = ca.write_cert_dir(tmp_path / "envoy", server_id)
    client_cert = load_istio_layout(ca.write_cert_dir(tmp_path / "client", client_id).directory)
    echo = await start_tcp_echo(ECHO_IP)
    echo_port = echo.sockets[0].getsockname()[1]
    envoy = EnvoyProcess(hbone_terminate((ENVOY_IP, 0), envoy_certs, "authority"), tmp_path)
    await asyncio.to_thread(envoy.start)
    pool = HbonePool(lambda _i: tls.client_context(client_cert), tls.verify_server)
    try:
        port = envoy.listener_addresses()["connect_terminate"][1]
        key = PoolKey(Identity.parse(client_id), frozenset({Identity.parse(server_id)}), (ENVOY_IP, port))
        blob = os.urandom(8 << 20)
        stream, proto = await pool.open(key, f"{ECHO_IP}:{echo_port}", (), Collect)
        assert isinstance(proto, Collect)
        stream.write(blob)
        stream.write_eof()
        await asyncio.wait_for(proto.eof, 30)
        assert proto.count == len(blob) and proto.hash.digest() == hashlib.sha256(blob).digest()
        # an unreachable target: Envoy answers 503 (envoy-peer.md gotcha 4)
        try:
            await pool.open(key, f"{ECHO_IP}:1", (), Collect)
            raise AssertionError("expected a 503")
        except TunnelError as err:
            assert err.status == 503
    finally:
        await pool.close()
        await asyncio.to_thread(envoy.stop)
        echo.close()
        await echo.wait_closed()
