"""AuthorizationPolicy at the waypoint (``targetRefs``; facts §3.2), with real traffic:
client → SOCKS5 → ztunnel → HBONE → waypoint → HBONE → ztunnel → app.

Envoy's HTTP RBAC filter answers a denied request 403 ``RBAC: access denied``
(``source/extensions/filters/http/rbac/rbac_filter.cc``), or for gRPC a trailers-only reply with
grpc-status 7 PERMISSION_DENIED (Envoy's ``httpToGrpcStatus``); for opaque TCP the network RBAC
filter closes the connection (``docs/root/intro/arch_overview/security/rbac_filter.rst``).
Denied requests count in ``istio_requests_total`` with ``response_code="403"`` and
``response_flags="-"`` (the RBAC filter sets no flag).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from tests.l7h2.test_grpc import _unary
from tests.support.apps import tcp_echo

from . import manifests as m
from .apps import EchoApp, serve
from .clients import socks5_open, socks_forwarder
from .conftest import MeshFactory, RunningMesh

pytestmark = pytest.mark.timeout(60)

GRPC_IP, GRPC_VIP, GRPC_PORT = m.ip("12.30"), m.ip("13.30"), 7070
TCP_IP, TCP_VIP, TCP_PORT = m.ip("12.31"), m.ip("13.31"), 9000
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}


def policy(name: str, spec: dict[str, Any], ns: str = "app") -> m.Doc:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def service_ref(name: str) -> dict[str, str]:
    return {"group": "", "kind": "Service", "name": name}


async def with_metrics(make_mesh: MeshFactory, *extra: m.Doc) -> tuple[RunningMesh, CollectorRegistry]:
    """A dev mesh and the registry its /metrics serves (the ztunnel's port; waypoints count there)."""
    mesh = await make_mesh(m.standard(*extra))
    return mesh, mesh.dev.registry


def requests_total(registry: CollectorRegistry) -> dict[str, float]:
    """``istio_requests_total`` by response code (reporter waypoint, flags ``-``)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "istio_requests_total":
                assert s.labels["reporter"] == "waypoint" and s.labels["response_flags"] == "-"
                out[s.labels["response_code"]] = out.get(s.labels["response_code"], 0) + s.value
    return out


async def test_gateway_policy_allows_get_allow_and_denies_the_rest(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    allow = policy("allow-get", {"targetRefs": [GATEWAY_REF], "action": "ALLOW", "rules": [
        {"to": [{"operation": {"methods": ["GET"], "paths": ["/allow"]}}]}]})
    mesh, registry = await with_metrics(make_mesh, allow)
    async with mesh.client(m.CLIENT_IP) as client:
        ok = await client.get(f"http://{m.V1_VIP}/allow")
        other = await client.get(f"http://{m.V1_VIP}/other")
        post = await client.post(f"http://{m.V1_VIP}/allow", content=b"x")
    assert ok.status_code == 200 and ok.json()["path"] == "/allow"
    for denied in (other, post):
        assert denied.status_code == 403 and denied.content == b"RBAC: access denied"
        assert denied.headers["content-type"] == "text/plain"
    assert echo_apps["v1"].paths() == ["/allow"]  # the app saw only the allowed request
    assert requests_total(registry) == {"200": 1, "403": 2}
    wp = mesh.waypoint("waypoint")
    assert wp.rbac.denied == 2 and wp.config_dump()["rbac"]["enforcing"] is True


async def test_service_policy_applies_to_its_service_only(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """targetRefs kind Service: requests to that Service only (IS:pilot/pkg/model/policyattachment.go)."""
    nothing = policy("v1-allow-nothing", {"targetRefs": [service_ref("echo-v1")]})
    mesh = await make_mesh(m.standard(nothing))
    async with mesh.client(m.CLIENT_IP) as client:
        v1 = await client.get(f"http://{m.V1_VIP}/a")
        v2 = await client.get(f"http://{m.V2_VIP}/b")
    assert v1.status_code == 403 and v1.content == b"RBAC: access denied"
    assert v2.status_code == 200
    assert echo_apps["v1"].paths() == [] and echo_apps["v2"].paths() == ["/b"]


async def test_header_when_condition(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    deny = policy("deny-mallory", {"targetRefs": [GATEWAY_REF], "action": "DENY", "rules": [
        {"when": [{"key": "request.headers[x-user]", "values": ["mallory"]}]}]})
    mesh = await make_mesh(m.standard(deny))
    async with mesh.client(m.CLIENT_IP) as client:
        bad = await client.get(f"http://{m.V1_VIP}/x", headers={"x-user": "mallory"})
        good = await client.get(f"http://{m.V1_VIP}/y", headers={"x-user": "alice"})
    assert bad.status_code == 403 and good.status_code == 200
    assert echo_apps["v1"].paths() == ["/y"]


@pytest.fixture
def grpc_server() -> Iterator[list[bytes]]:
    seen: list[bytes] = []

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(request)
        return _unary(request, context)  # type: ignore[no-any-return]

    ident = (lambda b: b, lambda b: b)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary, *ident),
                "Admin": grpc.unary_unary_rpc_method_handler(unary, *ident)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"{GRPC_IP}:{GRPC_PORT}")
    server.start()
    yield seen
    server.stop(None)


async def test_grpc_deny_is_permission_denied(make_mesh: MeshFactory, grpc_server: list[bytes]) -> None:
    deny = policy("deny-admin", {"targetRefs": [service_ref("grpc-echo")], "action": "DENY", "rules": [
        {"to": [{"operation": {"paths": ["/test.Echo/Admin"]}}]}]})
    mesh = await make_mesh(m.standard(
        m.pod("grpc-echo", GRPC_IP, ports=(GRPC_PORT,)),
        m.service("grpc-echo", GRPC_VIP, [("grpc", GRPC_PORT, GRPC_PORT)]),
        deny,
    ))
    registry = mesh.dev.registry
    async with socks_forwarder(mesh.socks, (GRPC_VIP, GRPC_PORT), m.CLIENT_IP) as local:
        def calls() -> None:
            with grpc.insecure_channel(f"{local[0]}:{local[1]}") as ch:
                assert ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=10) == b"echo:hi"
                with pytest.raises(grpc.RpcError) as info:
                    ch.unary_unary("/test.Echo/Admin")(b"no", timeout=10)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
                assert info.value.details() == "RBAC: access denied"  # type: ignore[attr-defined]

        await asyncio.to_thread(calls)
    assert grpc_server == [b"hi"]
    codes = {(s.labels["request_protocol"], s.labels["response_code"], s.labels["grpc_response_status"])
             for f in registry.collect() for s in f.samples if s.name == "istio_requests_total"}
    assert ("grpc", "200", "7") in codes  # Envoy's gRPC local reply: HTTP 200, grpc-status 7


async def test_opaque_tcp_denied_is_closed_without_dialling(make_mesh: MeshFactory) -> None:
    """Envoy's network RBAC behind connect_terminate: the tunnel was answered 200, then closed."""
    deny = policy("deny-sleep-tcp", {"targetRefs": [service_ref("tcp")], "action": "DENY", "rules": [
        {"from": [{"source": {"principals": [m.CLIENT_ID.removeprefix("spiffe://")]}}]}]})
    mesh = await make_mesh(m.standard(
        m.pod("tcp", TCP_IP, ports=(TCP_PORT,)),
        m.service("tcp", TCP_VIP, [("tcp-echo", TCP_PORT, TCP_PORT)]),
        m.pod("other", m.ip("12.2"), sa="other"),
        deny,
    ))
    peers: list[str] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await tcp_echo(reader, writer)

    server = await serve(echo, TCP_IP, TCP_PORT)
    try:
        reader, writer = await socks5_open(mesh.socks, TCP_VIP, TCP_PORT, m.CLIENT_IP)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no bytes
        writer.close()
        reader, writer = await socks5_open(mesh.socks, TCP_VIP, TCP_PORT, m.ip("12.2"))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"  # another client: allowed
        writer.close()
    finally:
        server.close()
    assert peers == [m.WP_IP]  # only the allowed connection was dialled
    wp = mesh.waypoint("waypoint")
    assert wp.refusals["authorization_denied"] == 1


async def test_policy_added_at_runtime_applies_to_the_next_request(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    mesh = await make_mesh(m.standard())
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/before")).status_code == 200
        mesh.write(m.standard(policy("allow-nothing", {"targetRefs": [GATEWAY_REF]})))
        await mesh.reload()
        r = await client.get(f"http://{m.V1_VIP}/after")  # same client connection, next request
    assert r.status_code == 403
    assert echo_apps["v1"].paths() == ["/before"]
