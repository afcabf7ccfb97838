"""Certificate rotation from Istio's mounted files: new files on disk → new connections use them,
existing tunnels keep flowing (issue 2; facts §1.1: ztunnel refreshes certificates in place)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.support.wait import wait_for
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.identity.certs import FileCertificateSource
from waypoint.mesh.folder import FolderSource
from waypoint.roles.runtime import watch_certificate_files
from waypoint.roles.ztunnel import ZtunnelRole
from waypoint.testing.certs import dev_ca, identity, workload_cert

from .conftest import settings
from .mesh import SERVER_IP, SERVER_PORT

ECHO = identity("default", "echo")


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


def serial_seen(stream: Any) -> int:
    der = stream.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def open_tunnel(pool: HbonePool) -> tuple[Any, Collect]:
    client = workload_cert("default", "sleep")
    key = PoolKey(client.identity, frozenset({ECHO}), (SERVER_IP, 15008))
    stream, proto = await pool.open(key, f"{SERVER_IP}:{SERVER_PORT}", (), Collect)
    assert isinstance(proto, Collect)
    return stream, proto


async def test_new_files_are_used_by_new_connections_while_old_tunnels_flow(
    mesh_dir: Path, tmp_path: Path
) -> None:
    ca = dev_ca()
    certs_dir = tmp_path / "certs"
    first = ca.issue(ECHO)
    first.write_istio_layout(certs_dir)
    source = FileCertificateSource(certs_dir)
    role = ZtunnelRole(settings("node-b", "127.0.9.1"), FolderSource(mesh_dir).reload(), source)
    await role.start()
    app = await asyncio.get_running_loop().create_server(Echo, SERVER_IP, SERVER_PORT)
    client_ctx = tls.client_context(workload_cert("default", "sleep"))
    pools = [HbonePool(lambda _i: client_ctx, tls.verify_server) for _ in range(2)]
    watcher = watch_certificate_files(source, role.refresh_certificates)
    try:
        old_stream, old = await open_tunnel(pools[0])
        assert serial_seen(old_stream) == first.leaf().serial_number
        old_stream.write(b"before")
        await wait_for(lambda: old.data == b"before")

        second = ca.issue(ECHO)
        second.write_istio_layout(certs_dir)
        new_serial = second.leaf().serial_number
        assert new_serial != first.leaf().serial_number

        async def new_connection_sees_new_cert() -> bool:
            pool = HbonePool(lambda _i: client_ctx, tls.verify_server)
            try:
                stream, _ = await open_tunnel(pool)
                seen = serial_seen(stream)
                stream.close()
                return seen == new_serial
            finally:
                await pool.close()

        deadline = asyncio.get_running_loop().time() + 10
        while not await new_connection_sees_new_cert():
            assert asyncio.get_running_loop().time() < deadline, "new certificate not used in time"
            await asyncio.sleep(0.2)

        old_stream.write(b" and after")  # the tunnel made with the old certificate keeps flowing
        await wait_for(lambda: old.data == b"before and after")
        assert serial_seen(old_stream) == first.leaf().serial_number
        old_stream.close()
    finally:
        assert watcher is not None
        watcher.cancel()
        for pool in pools:
            await pool.close()
        app.close()
        await role.stop(1.0)
