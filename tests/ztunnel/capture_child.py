"""Run inside a pod network namespace by test_capture.py, one process per pod.

``server``: the echo pod's netns. ztunnel B serves HBONE on ``<echo pod>:15008`` and dials the
app beside it; prints ``{"ready": true}``, then, once stdin closes, one JSON line of what the app
and B saw.

``client``: the sleep pod's netns, where the parent installed istio-cni's real rule set (facts
§1.7): every TCP connection not to 127.0.0.1 and not marked 0x539/0xfff is REDIRECTed to 15001.
The client dials the service VIP as if no proxy existed; ztunnel A reads SO_ORIGINAL_DST and
tunnels to B. A's own HBONE dial leaves from the same netns, so it passes the rules only when
marked (``--mark 1337``). Prints one JSON line.

``--original-source on`` makes B dial the app from the client's IP (IP_TRANSPARENT, as ztunnel's
``freebind_connect``), so the app's peer is the sleep pod, and the replies come back to B only
through istio-cni's connmark rules and fwmark route table. ``--exchange hello`` sends five bytes
instead of 64 MiB and reads to EOF (for a tunnel expected to be refused); ``--exchange
plaintext`` is the 64 MiB exchange from a marked client socket straight to the echo pod, which
passes the sleep pod's capture and is REDIRECTed to B's 15006 in the echo pod.

The pods live on a veth pair, not on 127/8, because istio-cni accepts every ``-o lo``
destination other than 127.0.0.1 uncaptured (``ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT``):
a peer on loopback would never show what the mark is for.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.ztunnel.mesh import NAMESPACE, pod, service
from waypoint.identity.ca import DevCA
from waypoint.identity.certs import DevCertificateProvider
from waypoint.mesh.folder import FolderSource
from waypoint.original_source import parse_original_source
from waypoint.packet_mark import INPOD_MARK, parse_mark
from waypoint.roles.ztunnel import ZtunnelRole, ZtunnelSettings

CLIENT_POD = "10.88.8.10"  # sleep, node-a (the client netns' eth0)
SERVER_POD = "10.88.9.10"  # echo, node-b (the server netns' eth0)
ECHO_VIP = "10.96.0.200"  # routed out of eth0 by the default route, as a ClusterIP is
SERVER_PORT = 7000
SIZE = 64 * 1024 * 1024  # each way (issue 2: 64 MiB through the 15001 path, byte-exact)
BLOCK = hashlib.sha256(b"server").digest() * 2048  # 64 KiB, deterministic


def write_mesh(folder: Path) -> Path:
    docs = [
        NAMESPACE,
        pod("sleep-6f8d9-abcde", CLIENT_POD, "node-a", "sleep", "sleep", template_hash="6f8d9"),
        pod("echo-1", SERVER_POD, "node-b", "echo", "echo", (SERVER_PORT,)),
        service("echo", ECHO_VIP, "echo", 80, SERVER_PORT),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.yaml").write_text("\n---\n".join(docs))
    return folder


def role(args: argparse.Namespace, node: str, **kw: object) -> ZtunnelRole:
    mark = parse_mark(args.mark)
    original_source = parse_original_source(args.original_source)
    assert mark != "auto" and original_source != "auto"
    base = ZtunnelSettings(node=node, socks5=None, inbound_plaintext=None, readiness=None, metrics=None, admin=None,
                           packet_mark=mark, original_source=original_source)
    snapshot = FolderSource(Path(args.mesh)).reload()
    return ZtunnelRole(replace(base, **kw), snapshot, DevCertificateProvider(DevCA.load(Path(args.ca))))  # type: ignore[arg-type]


def emit(result: dict[str, object]) -> None:
    print(json.dumps(result), flush=True)


async def until(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Wait for ``condition()`` with a deadline (never sleep-and-hope)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


# -- the echo pod -----------------------------------------------------------------------------
@dataclass
class AppSeen:
    connections: int = 0
    peers: list[str] = field(default_factory=list)  # the source IP of each connection the app accepted
    done: int = 0
    received_sha256: str | None = None


async def server(args: argparse.Namespace) -> None:
    b = role(args, "node-b", outbound=None, inbound_plaintext=("0.0.0.0", 15006),
             connect_timeout_s=1.0 if args.exchange == "hello" else 10.0)
    await b.start()
    seen = AppSeen()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Streams SIZE bytes of its own while hashing what it reads, then half-closes."""
        seen.connections += 1
        seen.peers.append(writer.get_extra_info("peername")[0])

        async def send() -> None:
            for _ in range(SIZE // len(BLOCK)):
                writer.write(BLOCK)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.get_running_loop().create_task(send())
        digest = hashlib.sha256()
        while data := await reader.read(1 << 18):
            digest.update(data)
        seen.received_sha256 = digest.hexdigest()
        await sender
        writer.close()
        seen.done += 1

    app_server = await asyncio.start_server(app, SERVER_POD, SERVER_PORT)
    emit({"ready": True})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the parent closes stdin
    await until(lambda: seen.done == seen.connections and not b.conns.live, 10.0)
    emit({"app_connections": seen.connections, "app_peers": seen.peers, "app_received": seen.received_sha256,
          "through_b": b.conns.completed, "refusals": b.refusals})
    app_server.close()
    await b.stop(1.0)


# -- the sleep pod ----------------------------------------------------------------------------
def failed_samples(a: ZtunnelRole) -> list[dict[str, str]]:
    return [s.labels for m in a.registry.collect() if m.name == "istio_tcp_connections_failed"
            for s in m.samples if s.name.endswith("_total")]


async def open_direct() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A marked socket from the sleep pod straight to the echo pod (uncaptured by the 0x539 mark)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, INPOD_MARK)
        sock.bind((CLIENT_POD, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (SERVER_POD, SERVER_PORT))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def client_exchange(a: ZtunnelRole, direct: bool = False) -> dict[str, object]:
    """64 MiB each way through the VIP (or ``direct``), half-close, hashes compared (mark on)."""
    if direct:
        reader, writer = await open_direct()
    else:
        reader, writer = await asyncio.open_connection(ECHO_VIP, 80, local_addr=(CLIENT_POD, 0))
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
    await until(lambda: not a.conns.live, 10.0)
    opened = [s.labels for m in a.registry.collect() if m.name == "istio_tcp_connections_opened"
              for s in m.samples if s.name.endswith("_total")]
    return {
        "client_received_exact": got == hashlib.sha256(BLOCK * (SIZE // len(BLOCK))).hexdigest(),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "through_a": a.conns.completed,
        "source_labels": opened[0] if opened else None,
    }


async def client_unmarked(a: ZtunnelRole) -> dict[str, object]:
    """Mark off: the client's connection is captured, and so is A's own HBONE dial for it."""
    reader, writer = await asyncio.open_connection(ECHO_VIP, 80, local_addr=(CLIENT_POD, 0))
    writer.write(b"hello")
    started = time.monotonic()
    received, error = b"", None
    try:
        received = await asyncio.wait_for(reader.read(), 4 * a.settings.connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        error = repr(exc)
    elapsed = time.monotonic() - started
    accepted = a.conns.completed + len(a.conns.live)  # every captured connection has a relay
    writer.close()
    # both attempts end at the connect timeout: the client's, and the one A made for it
    await until(lambda: len(failed_samples(a)) >= 2, 4 * a.settings.connect_timeout_s)
    return {"client_received": len(received), "client_error": error, "elapsed_s": elapsed,
            "accepted_by_a": accepted, "failed": failed_samples(a)}


async def client_hello(a: ZtunnelRole) -> dict[str, object]:
    """Five bytes, then read to EOF: what came back before the tunnel closed."""
    reader, writer = await asyncio.open_connection(ECHO_VIP, 80, local_addr=(CLIENT_POD, 0))
    writer.write(b"hello")
    received, error = b"", None
    try:
        received = await asyncio.wait_for(reader.read(), 4 * a.settings.connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        error = repr(exc)
    writer.close()
    await until(lambda: not a.conns.live, 10.0)
    return {"client_received": len(received), "client_error": error}


async def client(args: argparse.Namespace) -> None:
    unmarked = parse_mark(args.mark) is None
    a = role(args, "node-a", outbound=("127.0.0.1", 15001), connect_timeout_s=1.0 if unmarked else 10.0)
    await a.start()
    try:
        if unmarked:
            emit(await client_unmarked(a))
        else:
            emit(await (client_hello(a) if args.exchange == "hello"
                        else client_exchange(a, direct=args.exchange == "plaintext")))
    finally:
        await a.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("client", "server"))
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--mark", required=True, help="1337 or off")
    parser.add_argument("--original-source", default="off", help="on or off (B's app dial)")
    parser.add_argument("--exchange", choices=("full", "hello", "plaintext"), default="full")
    args = parser.parse_args()
    uvloop.run(client(args) if args.side == "client" else server(args))


if __name__ == "__main__":
    main()
