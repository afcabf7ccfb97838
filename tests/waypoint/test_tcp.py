"""Non-HTTP through a waypoint: a port declared TCP is relayed opaquely (server-first protocols
work: the waypoint dials before answering the CONNECT); an undeclared port is sniffed, as Envoy's
``http_inspector`` does (facts §2.4 main_internal), HTTP going through the filters and anything
else relayed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.l7h2.support import hypercorn_backend
from tests.support.apps import tcp_echo

from . import manifests as m
from .apps import serve, server_first
from .clients import socks5_open
from .conftest import IdentityProbe, MeshFactory, RunningMesh

pytestmark = pytest.mark.timeout(60)
TCP_IP, TCP_VIP = m.ip("12.20"), m.ip("13.20")
ECHO_PORT, FIRST_PORT, HTTP_ALT = 9000, 9001, 8080


async def tcp_mesh(make_mesh: MeshFactory) -> RunningMesh:
    ports = [("tcp-echo", 9000, ECHO_PORT), ("tcp-first", 9001, FIRST_PORT),
             ("other-echo", 9100, ECHO_PORT), ("other-first", 9101, FIRST_PORT), ("web", 9200, HTTP_ALT)]
    return await make_mesh(m.standard(
        m.pod("tcp", TCP_IP, ports=(ECHO_PORT, FIRST_PORT, HTTP_ALT)),
        m.service("tcp", TCP_VIP, ports),
    ), filters=[IdentityProbe()])


async def test_tcp_ports_relay_through_the_waypoint(make_mesh: MeshFactory) -> None:
    mesh = await tcp_mesh(make_mesh)
    peers: list[str] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await tcp_echo(reader, writer)

    echo_srv = await serve(echo, TCP_IP, ECHO_PORT)
    first_srv = await serve(server_first, TCP_IP, FIRST_PORT)
    try:
        for port in (9000, 9100):  # declared TCP; undeclared with a non-HTTP client (sniffed)
            reader, writer = await socks5_open(mesh.socks, TCP_VIP, port, m.CLIENT_IP)
            payload = bytes(range(256)) * 4096  # 1 MiB, binary
            sent = b"\x16\x03\x01 not http " + payload
            writer.write(sent)
            assert await asyncio.wait_for(reader.readexactly(len(sent)), 10) == sent, port
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # half-close travels, the server closes
            writer.close()
        assert peers == [m.WP_IP, m.WP_IP]  # the waypoint re-originated both
        # Server-first: the greeting arrives before the client says anything. On an undeclared
        # port this waits for the sniff timeout (0.5 s) before the waypoint relays as TCP.
        for port in (9001, 9101):
            reader, writer = await socks5_open(mesh.socks, TCP_VIP, port, m.CLIENT_IP)
            assert await asyncio.wait_for(reader.readline(), 5.0) == b"220 server-first ready\r\n"
            writer.write(b"HELO\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"250 got HELO\r\n"
            writer.close()
    finally:
        echo_srv.close()
        first_srv.close()
    assert mesh.waypoint("waypoint").pool.connections_opened >= 1


async def _json_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app speaking HTTP/1.1 and h2c (hypercorn): answers the path, headers and HTTP version it saw."""
    if scope["type"] != "http":
        return
    body = json.dumps({
        "path": scope["path"], "http_version": scope["http_version"],
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_undeclared_port_with_http_is_sniffed_and_its_protocol_followed_upstream(
    make_mesh: MeshFactory,
) -> None:
    mesh = await tcp_mesh(make_mesh)
    async with hypercorn_backend(_json_echo, TCP_IP, HTTP_ALT):
        for http2 in (False, True):
            async with mesh.client(m.CLIENT_IP, http2=http2) as client:
                r = await client.get(f"http://{TCP_VIP}:9200/sniffed")
            assert r.status_code == 200 and r.json()["path"] == "/sniffed"
            assert r.json()["headers"]["x-probe-peer-identity"] == m.CLIENT_ID  # through the filters
            # Istio's useDownstreamProtocol for undeclared ports: h2c in, h2c out; HTTP/1.1 in, 1.1 out
            assert r.json()["http_version"] == ("2" if http2 else "1.1")
