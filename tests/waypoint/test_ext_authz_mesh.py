"""ext-authz providers inside the mesh (HBONE from the waypoint) and ``includeRequestBodyInCheck``.

Providers run as ambient pods of the dev mesh: istiod gives the waypoint's ext_authz cluster the
same HBONE as any outbound cluster to an ambient endpoint (``IS:pilot/pkg/model/push_context.go``
``extraServicesForProxy``; ``waypoint/policy/extauthz_forward.py``), so the provider pod's ztunnel
reports the check's connection with the waypoint as ``source_principal``. Body buffering follows
Envoy ``ext_authz.cc`` (``decodeHeaders``/``decodeData``/``isBufferFull``) and
``check_request_utils.cc`` ``setHttpRequest`` (body cut at maxRequestBytes, ``raw_body`` with
packAsBytes, ``x-envoy-auth-partial-body``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc  # type: ignore[import-untyped]

from tests.l7.test_chain_unit import Sink, Terminal
from waypoint.l7.chain import FilterChain
from waypoint.l7.filter import STOP, DownstreamInfo, Filter, LocalReply, RequestContext, Result
from waypoint.l7.message import RequestHead

from . import manifests as m
from .apps import EchoApp
from .conftest import MeshFactory, RunningMesh, opened_connections
from .test_authz import service_ref
from .test_ext_authz import GrpcAuthz, custom, mesh_config

pytestmark = pytest.mark.timeout(60)

HTTP_IP, GRPC_IP, PLAIN_IP = m.ip("12.50"), m.ip("12.51"), m.ip("12.52")
HTTP_PORT, GRPC_PORT = 8000, 9000
HTTP_HOST = "ext-authz.authz.svc.cluster.local"
GRPC_HOST = "grpc-authz.authz.svc.cluster.local"
PLAIN_HOST = "plain-authz.outside.svc.cluster.local"


def provider_docs(*, strict: bool = True) -> list[m.Doc]:
    """The providers' own namespace (ambient, STRICT mTLS) and one outside the mesh."""
    docs = [
        m.namespace("authz"),
        m.pod("ext-authz", HTTP_IP, ns="authz", ports=(HTTP_PORT,)),
        m.service("ext-authz", m.ip("13.50"), [("http", HTTP_PORT, HTTP_PORT)], ns="authz"),
        m.pod("grpc-authz", GRPC_IP, ns="authz", ports=(GRPC_PORT,)),
        m.service("grpc-authz", m.ip("13.51"), [("grpc", GRPC_PORT, GRPC_PORT)], ns="authz"),
        m.namespace("outside", ambient=False),
        m.pod("plain-authz", PLAIN_IP, ns="outside", ports=(HTTP_PORT,)),
        m.service("plain-authz", m.ip("13.52"), [("http", HTTP_PORT, HTTP_PORT)], ns="outside"),
    ]
    if strict:
        docs.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                     "metadata": {"name": "strict", "namespace": "authz"}, "spec": {"mtls": {"mode": "STRICT"}}})
    return docs


def http(name: str, service: str = HTTP_HOST, **extra: Any) -> dict[str, Any]:
    spec = {"service": service, "port": HTTP_PORT, "includeRequestHeadersInCheck": ["x-user"], **extra}
    return {"name": name, "envoyExtAuthzHttp": spec}


def grpc_provider(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": GRPC_HOST, "port": GRPC_PORT, "timeout": "5s", **extra}}


@dataclass
class Check:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class BodyAuthz:
    """An HTTP ext-authz server (keep-alive) that allows ``x-user: alice`` or a body naming alice."""

    ip: str
    checks: list[Check] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            while True:
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.checks.append(Check(method, path, headers, body, peer))
                ok = headers.get("x-user") == "alice" or b"alice" in body
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" if ok else
                             b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def http_authz() -> AsyncIterator[BodyAuthz]:
    server = BodyAuthz(HTTP_IP)
    listener = await asyncio.start_server(server.handle, HTTP_IP, HTTP_PORT)
    yield server
    listener.close()


@pytest.fixture
async def plain_authz() -> AsyncIterator[BodyAuthz]:
    server = BodyAuthz(PLAIN_IP)
    listener = await asyncio.start_server(server.handle, PLAIN_IP, HTTP_PORT)
    yield server
    listener.close()


def _grpc_decide(req: pb.CheckRequest) -> bool:
    http_req = req.attributes.request.http
    return bool(http_req.headers.get("x-user") == "alice" or "alice" in http_req.body or b"alice" in http_req.raw_body)


@pytest.fixture
async def grpc_authz() -> AsyncIterator[GrpcAuthz]:
    servicer = GrpcAuthz(_grpc_decide)
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(servicer, server)
    server.add_insecure_port(f"{GRPC_IP}:{GRPC_PORT}")
    await server.start()
    yield servicer
    await server.stop(None)


def inbound_principals(mesh: RunningMesh, workload: str) -> set[str]:
    """``source_principal`` of the connections the provider pod's ztunnel accepted for it."""
    return {c["source_principal"] for c in opened_connections(mesh, "destination")
            if c["destination_workload"] == workload}


# ---- over HBONE ----------------------------------------------------------------------------------
async def test_in_mesh_providers_are_asked_over_hbone_as_the_waypoint(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: BodyAuthz, grpc_authz: GrpcAuthz,
    plain_authz: BodyAuthz,
) -> None:
    """Ambient provider pods (HTTP and gRPC, STRICT namespace) get the check through their ztunnel
    from the waypoint's identity; the provider outside the mesh is dialled in plain TCP."""
    mesh = await make_mesh(m.standard(
        *provider_docs(),
        mesh_config(http("in-http"), grpc_provider("in-grpc"), http("plain", PLAIN_HOST)),
        custom("v1", "in-http", service_ref("echo-v1"), ["/*"]),
        custom("v2", "in-grpc", service_ref("echo-v2"), ["/*"]),
        custom("mirror", "plain", service_ref("echo-mirror"), ["/*"]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        results = [(await client.get(f"http://{vip}/x", headers={"x-user": user})).status_code
                   for vip in (m.V1_VIP, m.V2_VIP, m.MIRROR_VIP) for user in ("alice", "bob")]
    assert results == [200, 401, 200, 403, 200, 401]
    assert inbound_principals(mesh, "ext-authz") == {m.WAYPOINT_ID}
    assert inbound_principals(mesh, "grpc-authz") == {m.WAYPOINT_ID}
    assert inbound_principals(mesh, "plain-authz") == set()  # not in the mesh: no ztunnel in the way
    assert {c.peer for c in http_authz.checks} == {m.WP_IP}  # the destination ztunnel dials from the waypoint's IP
    assert len(plain_authz.checks) == 2 and len(grpc_authz.requests) == 2
    # the HBONE connection was pooled: one CONNECT per client connection, not one per check
    provider = mesh.waypoint("waypoint").ext_authz_clients.get("in-http")
    assert sum(f.connections for f in provider.forwarders) == 1  # type: ignore[union-attr]


async def test_unreachable_in_mesh_provider_is_status_on_error(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """Nothing listens behind the provider pod's ztunnel: the CONNECT fails, the check errors (403)."""
    mesh = await make_mesh(m.standard(
        *provider_docs(strict=False),
        mesh_config(http("in-http", timeout="3s"), http("open", failOpen=True)),
        custom("v1", "in-http", service_ref("echo-v1"), ["/*"]),
        custom("v2", "open", service_ref("echo-v2"), ["/*"]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        closed = await client.get(f"http://{m.V1_VIP}/x", headers={"x-user": "alice"})
        opened = await client.get(f"http://{m.V2_VIP}/y")
    assert (closed.status_code, closed.content, opened.status_code) == (403, b"", 200)
    assert echo_apps["v1"].paths() == []


# ---- includeRequestBodyInCheck -------------------------------------------------------------------
async def test_http_provider_decides_on_the_body_and_413_past_max_request_bytes(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: BodyAuthz
) -> None:
    mesh = await make_mesh(m.standard(
        *provider_docs(),
        mesh_config(http("whole", includeRequestBodyInCheck={"maxRequestBytes": 32}),
                    http("partial", includeRequestHeadersInCheck=["x-envoy-auth-partial-body"],
                         includeRequestBodyInCheck={"maxRequestBytes": 16, "allowPartialMessage": True})),
        custom("v1", "whole", service_ref("echo-v1"), ["/*"]),
        custom("v2", "partial", service_ref("echo-v2"), ["/*"]),
    ))
    big = b"user=alice;" + bytes(range(256)) * 1024  # 256 KiB: held behind the check, then sent on whole
    async with mesh.client(m.CLIENT_IP) as client:
        alice = await client.post(f"http://{m.V1_VIP}/a", content=b"user=alice")
        bob = await client.post(f"http://{m.V1_VIP}/b", content=b"user=bob")
        too_big = await client.post(f"http://{m.V1_VIP}/c", content=b"x" * 33)
        get = await client.get(f"http://{m.V1_VIP}/d", headers={"x-user": "alice"})
        partial = await client.post(f"http://{m.V2_VIP}/e", content=big)
    assert alice.status_code == 200 and alice.json()["body_bytes"] == 10
    assert bob.status_code == 401 and bob.content == b"no"
    assert (too_big.status_code, too_big.content) == (413, b"Payload Too Large")
    assert get.status_code == 200
    assert partial.status_code == 200 and partial.json()["sha256"] == hashlib.sha256(big).hexdigest()
    whole, denied, no_body, cut = http_authz.checks  # the 413 never reached the provider
    assert (whole.method, whole.path, whole.body) == ("POST", "/a", b"user=alice")
    assert whole.headers["content-length"] == "10"
    assert denied.body == b"user=bob" and no_body.body == b"" and no_body.headers["content-length"] == "0"
    assert cut.body == big[:16] and cut.headers["x-envoy-auth-partial-body"] == "true"
    assert [s.path for s in echo_apps["v1"].seen] == ["/a", "/d"]


async def test_grpc_provider_gets_the_body_as_text_or_raw_bytes(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], grpc_authz: GrpcAuthz
) -> None:
    mesh = await make_mesh(m.standard(
        *provider_docs(),
        mesh_config(grpc_provider("text", includeRequestBodyInCheck={"maxRequestBytes": 64}),
                    grpc_provider("raw", includeRequestBodyInCheck={"maxRequestBytes": 8, "allowPartialMessage": True,
                                                                    "packAsBytes": True})),
        custom("v1", "text", service_ref("echo-v1"), ["/*"]),
        custom("v2", "raw", service_ref("echo-v2"), ["/*"]),
    ))
    raw = b"alice\xff\x00\x01-and-more"
    async with mesh.client(m.CLIENT_IP) as client:
        text = await client.post(f"http://{m.V1_VIP}/t", content=b"name=alice")
        nope = await client.post(f"http://{m.V1_VIP}/n", content=b"name=eve")
        packed = await client.post(f"http://{m.V2_VIP}/r", content=raw)
    assert (text.status_code, nope.status_code, packed.status_code) == (200, 403, 200)
    assert packed.json()["body_bytes"] == len(raw)
    first, second, third = (r.attributes.request.http for r in grpc_authz.requests)
    assert first.body == "name=alice" and first.raw_body == b""
    assert first.headers["x-envoy-auth-partial-body"] == "false"
    assert second.body == "name=eve"
    assert third.raw_body == raw[:8] and third.body == "" and third.headers["x-envoy-auth-partial-body"] == "true"
    assert inbound_principals(mesh, "grpc-authz") == {m.WAYPOINT_ID}


# ---- the chain's part, in memory -----------------------------------------------------------------
class Reader(Filter):
    """Stops on headers and reads the body on until its end, or answers 413 past 4 bytes."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, bool]] = []

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        assert ctx.stream is not None
        ctx.stream.feed_request_body(self.on_body)
        return STOP

    def on_body(self, chunk: bytes, end_stream: bool) -> Result:
        self.got.append((chunk, end_stream))
        if sum(len(c) for c, _ in self.got) > 4:
            return LocalReply(413, b"Payload Too Large")
        return STOP


def test_a_stopped_filter_reads_the_body_which_goes_on_after_resume() -> None:
    reader, term, sink = Reader(), Terminal(), Sink()
    ctx = RequestContext(DownstreamInfo(), RequestHead("POST", "/p", "a", []), 0.0)
    stream = FilterChain([reader], term).new_stream(ctx, sink)
    stream.decode_headers(ctx.request, False)
    stream.decode_data(b"ab", False)
    stream.decode_data(b"c", True)
    assert reader.got == [(b"ab", False), (b"c", True)] and term.got == [] and not sink.paused
    stream.feed_request_body(None)
    stream.resume()
    assert term.got == [("headers", "/p"), ("data", b"ab"), ("data", b"c")]

    reader, term, sink = Reader(), Terminal(), Sink()
    ctx = RequestContext(DownstreamInfo(), RequestHead("POST", "/p", "a", []), 0.0)
    stream = FilterChain([reader], term).new_stream(ctx, sink)
    stream.decode_headers(ctx.request, False)
    stream.decode_data(b"abc", False)
    stream.decode_data(b"de", False)
    stream.decode_data(b"late", True)
    assert sink.out == [("headers", 413, False), ("data", b"Payload Too Large", True)] and term.got == []
