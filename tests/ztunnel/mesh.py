"""A two-node mesh on loopback for the ztunnel tests: client pods on 127.0.8.x, servers on 127.0.9.x."""

from __future__ import annotations

import asyncio
import struct
import textwrap
from pathlib import Path

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
"""


def pod(
    name: str, ip: str, node: str, sa: str, app: str, ports: tuple[int, ...] = (), ns: str = "default",
    template_hash: str | None = None,
) -> str:
    labels = f"{{app: {app}, pod-template-hash: '{template_hash}'}}" if template_hash else f"{{app: {app}}}"
    container_ports = "".join(f"\n        - containerPort: {p}" for p in ports) or " []"
    return textwrap.dedent(f"""
    apiVersion: v1
    kind: Pod
    metadata:
      name: {name}
      namespace: {ns}
      labels: {labels}
    spec:
      serviceAccountName: {sa}
      nodeName: {node}
      containers:
        - name: main
          ports:{container_ports}
    status:
      phase: Running
      podIP: {ip}
      conditions: [{{type: Ready, status: "True"}}]
    """)


def service(name: str, vip: str, app: str, port: int, target: int, ns: str = "default") -> str:
    return textwrap.dedent(f"""
    apiVersion: v1
    kind: Service
    metadata: {{name: {name}, namespace: {ns}}}
    spec:
      clusterIP: {vip}
      selector: {{app: {app}}}
      ports: [{{name: tcp, port: {port}, targetPort: {target}}}]
    """)


CLIENT_IP = "127.0.8.10"
SERVER_IP = "127.0.9.10"
SERVER_PORT = 7000
ECHO_VIP = "127.0.9.200"
EMPTY_VIP = "127.0.9.201"
OUTSIDE_IP = "127.0.9.50"  # a workload out of the mesh (namespace not ambient)


def write_mesh(folder: Path) -> Path:
    docs = [
        NAMESPACE,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n",
        pod("sleep-6f8d9-abcde", CLIENT_IP, "node-a", "sleep", "sleep", template_hash="6f8d9"),
        pod("echo-1", SERVER_IP, "node-b", "echo", "echo", (SERVER_PORT,)),
        pod("legacy-1", OUTSIDE_IP, "node-b", "legacy", "legacy", (SERVER_PORT,), ns="legacy"),
        service("echo", ECHO_VIP, "echo", 80, SERVER_PORT),
        service("empty", EMPTY_VIP, "nothing", 80, SERVER_PORT),
        service("legacy", "127.0.9.202", "legacy", 80, SERVER_PORT, ns="legacy"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.yaml").write_text("\n---\n".join(docs))
    return folder


async def socks5_connect(
    proxy: tuple[str, int], host: str, port: int, source_ip: str | None = None
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """RFC 1928 client: returns (REP code, reader, writer)."""
    local = (source_ip, 0) if source_ip else None
    reader, writer = await asyncio.open_connection(*proxy, local_addr=local)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    try:
        addr = b"\x01" + bytes(int(x) for x in host.split("."))
    except ValueError:
        addr = b"\x03" + bytes((len(host),)) + host.encode()
    writer.write(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    reply = await reader.readexactly(10)
    return reply[1], reader, writer
