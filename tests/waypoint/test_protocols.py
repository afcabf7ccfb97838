"""Real clients through source ztunnel → waypoint → destination ztunnel (facts §2.3, §2.4):
httpx over HTTP/1.1 and HTTP/2 prior knowledge, grpcio (unary, server/bidi streaming, error
status with trailers), and a WebSocket echo."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.l7h2.test_grpc import _bidi, _server_stream, _unary  # the same echo handlers

from . import manifests as m
from .apps import EchoApp
from .clients import socks5_socket, socks_forwarder
from .conftest import IdentityProbe, MeshFactory

pytestmark = pytest.mark.timeout(60)

GRPC_IP, GRPC_VIP, GRPC_PORT = m.ip("12.13"), m.ip("13.5"), 7070
WS_IP, WS_VIP, WS_PORT = m.ip("12.14"), m.ip("13.6"), 8081


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2-prior-knowledge"])
async def test_httpx_through_the_waypoint(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http2: bool) -> None:
    mesh = await make_mesh(m.standard(), filters=[IdentityProbe()])
    async with mesh.client(m.CLIENT_IP, http2=http2) as client:
        for i in range(4):
            r = await client.post(f"http://{m.ECHO_VIP}/hello?i={i}", content=b"x" * 1000, headers={"x-test": "1"})
            assert r.status_code == 200, r.text
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            seen = r.json()
            assert seen["path"] == f"/hello?i={i}" and seen["method"] == "POST" and seen["body_bytes"] == 1000
            assert seen["host"] == m.ECHO_VIP and seen["headers"]["x-test"] == "1"
            # The filters see the client's identity and address (facts §2.4 connect_authority) ...
            assert seen["headers"]["x-probe-peer-identity"] == m.CLIENT_ID
            assert seen["headers"]["x-probe-peer-address"] == m.CLIENT_IP
            assert seen["headers"]["x-forwarded-proto"] == "http"
    # ... round robin over both pods of the service.
    assert {len(echo_apps["v1"].seen), len(echo_apps["v2"].seen)} == {2}


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-detail", "why"),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today: " + request.decode())
    raise AssertionError("abort raises")


@pytest.fixture
def grpc_server() -> Iterator[None]:
    ident = (lambda b: b, lambda b: b)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, *ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, *ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, *ident),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail, *ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"{GRPC_IP}:{GRPC_PORT}")
    server.start()
    yield
    server.stop(None)


async def test_grpc_through_the_waypoint(make_mesh: MeshFactory, grpc_server: None) -> None:
    docs = m.standard(
        m.pod("grpc-echo", GRPC_IP, ports=(GRPC_PORT,)),
        m.service("grpc-echo", GRPC_VIP, [("grpc", GRPC_PORT, GRPC_PORT)]),
    )
    mesh = await make_mesh(docs)
    async with socks_forwarder(mesh.socks, (GRPC_VIP, GRPC_PORT), m.CLIENT_IP) as local:
        def calls() -> None:
            options = [("grpc.default_authority", f"grpc-echo.app.svc.cluster.local:{GRPC_PORT}")]
            with grpc.insecure_channel(f"{local[0]}:{local[1]}", options=options) as ch:
                unary = ch.unary_unary("/test.Echo/Unary")
                assert unary(b"hi", timeout=10) == b"echo:hi"
                stream = ch.unary_stream("/test.Echo/ServerStream")
                assert list(stream(b"5", timeout=10)) == [b"item-%d" % i for i in range(5)]
                bidi = ch.stream_stream("/test.Echo/Bidi")
                assert list(bidi(iter([b"a", b"b", b"c"]), timeout=10)) == [b"A", b"B", b"C"]
                fail = ch.unary_unary("/test.Echo/Fail")
                with pytest.raises(grpc.RpcError) as info:
                    fail(b"x", timeout=10)
                err = info.value
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
                assert err.details() == "not today: x"  # type: ignore[attr-defined]
                assert ("x-detail", "why") in err.trailing_metadata()  # type: ignore[attr-defined]

        await asyncio.to_thread(calls)


async def test_websocket_through_the_waypoint(make_mesh: MeshFactory) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    docs = m.standard(
        m.pod("ws", WS_IP, ports=(WS_PORT,)),
        m.service("ws", WS_VIP, [("http", 80, WS_PORT)]),
    )
    mesh = await make_mesh(docs)
    async with serve(echo, WS_IP, WS_PORT):
        sock = await socks5_socket(mesh.socks, WS_VIP, 80, m.CLIENT_IP)
        async with connect(f"ws://{WS_VIP}/chat", sock=sock) as ws:
            for text in ("hello", "x" * 100_000):
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"


def _named_server(name: str, ip: str) -> grpc.Server:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        added = dict(context.invocation_metadata()).get("x-added", "")
        return f"{name}:{added}:".encode() + request

    ident = (lambda b: b, lambda b: b)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary, *ident),
                "Other": grpc.unary_unary_rpc_method_handler(unary, *ident)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"{ip}:{GRPC_PORT}")
    server.start()
    return server


async def test_grpcroute_method_and_header_matches(make_mesh: MeshFactory) -> None:
    """GRPCRoute (Istio converts it like an HTTPRoute: method → path match; filters: header modifiers)."""
    v1_ip, v2_ip, vip = m.ip("12.15"), m.ip("12.16"), m.ip("13.7")
    grpc_ports = [("grpc", GRPC_PORT, GRPC_PORT)]
    route = m.http_route("g", "grpc", [
        {"matches": [{"method": {"service": "test.Echo", "method": "Other"}}],
         "backendRefs": [m.backend_ref("grpc-v2", GRPC_PORT)]},
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
             "add": [{"name": "x-added", "value": "by-route"}]}}],
         "backendRefs": [m.backend_ref("grpc-v2", GRPC_PORT)]},
        {"backendRefs": [m.backend_ref("grpc-v1", GRPC_PORT)]},
    ], kind="GRPCRoute")
    mesh = await make_mesh(m.standard(
        m.pod("grpc-v1", v1_ip, ports=(GRPC_PORT,)), m.pod("grpc-v2", v2_ip, ports=(GRPC_PORT,)),
        m.service("grpc", vip, grpc_ports, selector={"app": "grpc-v1"}),
        m.service("grpc-v1", m.ip("13.8"), grpc_ports), m.service("grpc-v2", m.ip("13.9"), grpc_ports),
        route,
    ))
    servers = [_named_server("v1", v1_ip), _named_server("v2", v2_ip)]
    try:
        async with socks_forwarder(mesh.socks, (vip, GRPC_PORT), m.CLIENT_IP) as local:
            def calls() -> None:
                with grpc.insecure_channel(f"{local[0]}:{local[1]}") as ch:
                    unary, other = ch.unary_unary("/test.Echo/Unary"), ch.unary_unary("/test.Echo/Other")
                    assert unary(b"a", timeout=10) == b"v1::a"
                    assert other(b"b", timeout=10) == b"v2::b"
                    assert unary(b"c", timeout=10, metadata=(("x-canary", "yes"),)) == b"v2:by-route:c"

            await asyncio.to_thread(calls)
    finally:
        for server in servers:
            server.stop(None)
