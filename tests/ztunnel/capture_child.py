"""Run inside a network namespace by test_capture.py: 15001 capture through iptables REDIRECT.

The parent has installed ``nat OUTPUT -d <echo VIP> -p tcp -j REDIRECT --to-ports 15001`` in the
namespace (the capture rule of facts §1.7, narrowed to the VIP: our dials are not SO_MARKed).
A client bound to the client pod's address dials the service VIP as if no proxy existed; ztunnel A
reads SO_ORIGINAL_DST, tunnels to ztunnel B, which dials the app. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.ztunnel.mesh import CLIENT_IP, ECHO_VIP, SERVER_IP, SERVER_PORT, write_mesh
from waypoint.identity.certs import DevCertificateProvider
from waypoint.mesh.folder import FolderSource
from waypoint.roles.ztunnel import ZtunnelRole, ZtunnelSettings
from waypoint.testing.certs import dev_ca


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main() -> dict[str, object]:
    snapshot = FolderSource(write_mesh(Path(tempfile.mkdtemp()) / "mesh")).reload()
    provider = DevCertificateProvider(dev_ca())
    off = ZtunnelSettings(socks5=None, inbound_plaintext=None, readiness=None, metrics=None, admin=None)
    a = ZtunnelRole(replace(off, node="node-a", outbound=("127.0.0.1", 15001)), snapshot, provider)
    b = ZtunnelRole(replace(off, node="node-b", outbound=None), snapshot, provider)
    await a.start()
    await b.start()
    app = await asyncio.start_server(echo, SERVER_IP, SERVER_PORT)
    reader, writer = await asyncio.open_connection(ECHO_VIP, 80, local_addr=(CLIENT_IP, 0))
    payload = b"captured " * 100_000
    writer.write(payload)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    while a.conns.live or b.conns.live:
        await asyncio.sleep(0.01)
    opened = [
        (s.labels, s.value)
        for m in a.registry.collect()
        if m.name == "istio_tcp_connections_opened"
        for s in m.samples
        if s.name.endswith("_total")
    ]
    result: dict[str, object] = {
        "echoed": got == payload,
        "through_a": a.conns.completed,
        "through_b": b.conns.completed,
        "source_labels": opened[0][0] if opened else None,
    }
    app.close()
    await a.stop(1.0)
    await b.stop(1.0)
    return result


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main())))
