"""Run inside a network namespace by test_capture.py: 15001 capture through iptables REDIRECT.

The parent has installed ``nat OUTPUT -d <echo VIP> -p tcp -j REDIRECT --to-ports 15001`` in the
namespace (the capture rule of facts §1.7, narrowed to the VIP: our dials are not SO_MARKed).
A client bound to the client pod's address dials the service VIP as if no proxy existed; ztunnel A
reads SO_ORIGINAL_DST, tunnels to ztunnel B, which dials the app. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
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

SIZE = 64 * 1024 * 1024  # each way (issue 2: 64 MiB through the 15001 path, byte-exact)
SEEN: dict[str, str] = {}


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Streams SIZE bytes of its own while hashing what it reads, then half-closes."""

    async def send() -> None:
        block = hashlib.sha256(b"server").digest() * 2048  # 64 KiB, deterministic
        for _ in range(SIZE // len(block)):
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    sender = asyncio.get_running_loop().create_task(send())
    digest = hashlib.sha256()
    while data := await reader.read(1 << 18):
        digest.update(data)
    SEEN["app_received"] = digest.hexdigest()
    await sender
    writer.close()


async def main() -> dict[str, object]:
    snapshot = FolderSource(write_mesh(Path(tempfile.mkdtemp()) / "mesh")).reload()
    provider = DevCertificateProvider(dev_ca())
    off = ZtunnelSettings(socks5=None, inbound_plaintext=None, readiness=None, metrics=None, admin=None)
    a = ZtunnelRole(replace(off, node="node-a", outbound=("127.0.0.1", 15001)), snapshot, provider)
    b = ZtunnelRole(replace(off, node="node-b", outbound=None), snapshot, provider)
    await a.start()
    await b.start()
    server = await asyncio.start_server(app, SERVER_IP, SERVER_PORT)
    reader, writer = await asyncio.open_connection(ECHO_VIP, 80, local_addr=(CLIENT_IP, 0))
    payload = os.urandom(SIZE)

    async def send() -> None:
        for i in range(0, SIZE, 1 << 20):
            writer.write(payload[i : i + (1 << 20)])
            await writer.drain()
        writer.write_eof()  # half-close: the reply keeps coming

    async def receive() -> str:
        digest = hashlib.sha256()
        while data := await reader.read(1 << 18):
            digest.update(data)
        return digest.hexdigest()

    _, got = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
    writer.close()
    expected_reply = hashlib.sha256((hashlib.sha256(b"server").digest() * 2048) * (SIZE // (64 * 1024)))
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
        "client_received_exact": got == expected_reply.hexdigest(),
        "app_received_exact": SEEN.get("app_received") == hashlib.sha256(payload).hexdigest(),
        "through_a": a.conns.completed,
        "through_b": b.conns.completed,
        "source_labels": opened[0][0] if opened else None,
    }
    server.close()
    await a.stop(1.0)
    await b.stop(1.0)
    return result


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main())))
