"""The example's own apps: an HTTP echo and a TCP echo, served on their pods' addresses.

They stand for the user's workloads. They know nothing of the mesh: what reaches them is
plain TCP from the destination ztunnel, which is the point the example makes.
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024


async def _read_http_request(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return parts[0], parts[1], headers, body


def echo_handler(pod_name: str, namespace: str) -> object:
    """An HTTP/1.1 keep-alive echo: the answer says which pod answered and what it saw."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while (request := await _read_http_request(reader)) is not None:
                method, path, headers, body = request
                answer = {
                    "pod": pod_name,
                    "namespace": namespace,
                    "method": method,
                    "path": path,
                    "headers": dict(headers),
                    "body_bytes": len(body),
                    "seen_from": f"{peer[0]}:{peer[1]}" if peer else None,
                    "note": "this app speaks plain HTTP; the ztunnels carried it over mutual TLS (HBONE)",
                }
                payload = json.dumps(answer, indent=2).encode() + b"\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start_example_apps(pods: dict[str, tuple[str, str, str]]) -> list[asyncio.Server]:
    """Start the apps of the shipped example: ``pods`` maps app label -> (pod name, namespace, pod IP)."""
    servers: list[asyncio.Server] = []
    if "echo" in pods:
        name, ns, ip = pods["echo"]
        servers.append(await asyncio.start_server(echo_handler(name, ns), ip, 8080))  # type: ignore[arg-type]
    if "tcp-echo" in pods:
        _, _, ip = pods["tcp-echo"]
        servers.append(await asyncio.start_server(_tcp_echo, ip, 9000))
    return servers
