"""A tiny HBONE peer in its own process, for tests that kill or freeze it mid-transfer.

``python -m tests.hbone.peer_process server CERT_DIR IP`` serves HBONE on ``IP:0``, echoing every
tunnel, and prints ``PORT <n>``. ``python -m tests.hbone.peer_process client CERT_DIR IP
SERVER_IP:PORT SERVER_SPIFFE_ID`` opens one tunnel from ``IP`` and pumps bytes into it forever
(reading the echo), printing ``OPEN`` once the tunnel is up. Both run until killed.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from tests.hbone.helpers import Echo, Pump
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.identity.certs import load_istio_layout
from waypoint.identity.spiffe import Identity


async def serve(cert_dir: str, ip: str) -> None:
    ctx = tls.server_context(load_istio_layout(cert_dir))

    async def on_tunnel(req: TunnelRequest) -> None:
        req.accept(Echo)

    server = HboneServer(lambda _ip: ctx, lambda s: tls.verify_client(s, "cluster.local"), on_tunnel)
    listener = await server.listen(ip, 0)
    print("PORT", listener.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def pump(cert_dir: str, ip: str, server: str, server_id: str) -> None:
    cert = load_istio_layout(cert_dir)
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server, bind_source_ip=True)
    host, port = server.rsplit(":", 1)
    key = PoolKey(cert.identity, frozenset({Identity.parse(server_id)}), (host, int(port)), ip)
    await pool.open(key, f"{host}:1", (), Pump)
    print("OPEN", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    if argv[0] == "server":
        uvloop.run(serve(argv[1], argv[2]))
    else:
        uvloop.run(pump(argv[1], argv[2], argv[3], argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
