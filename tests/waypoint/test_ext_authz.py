"""CUSTOM AuthorizationPolicy at the waypoint, asked of real ext-authz servers (facts §3.1:
"``action: CUSTOM`` AuthorizationPolicies attached to the waypoint become the waypoint's first auth
filter"), with real traffic: client → SOCKS5 → ztunnel → HBONE → waypoint → HBONE → ztunnel → app.

The providers come from the ``istio`` ConfigMap in ``istio-system`` (MeshConfig ``extensionProviders``),
as in Istio's task "External Authorization" (``content/en/docs/tasks/security/authorization/authz-custom/``):
its sample HTTP server allows ``x-ext-authz: allow``; ours allows ``x-user: alice``, denies the rest
with 401 and a body, and sends ``x-authz: ok`` upstream. Envoy's HTTP check and answer rules are
``ext_authz_http_impl.cc`` (``check``, ``toResponse``); the gRPC ones ``ext_authz_grpc_impl.cc``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import regopy  # type: ignore[import-untyped]
import yaml
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2 as pb  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format, wrappers_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

from . import manifests as m
from .apps import EchoApp
from .clients import socks_forwarder
from .conftest import MeshFactory, RunningMesh
from .test_authz import GATEWAY_REF, GRPC_IP, GRPC_PORT, GRPC_VIP, grpc_server, policy, service_ref

pytestmark = pytest.mark.timeout(60)
__all__ = ["grpc_server"]  # test_authz's fixture: a real gRPC echo server on the grpc-echo pod

AUTHZ_IP, AUTHZ_VIP, AUTHZ_PORT = m.ip("12.40"), m.ip("13.40"), 8000
GRPC_AUTHZ_IP, GRPC_AUTHZ_VIP, GRPC_AUTHZ_PORT = m.ip("12.41"), m.ip("13.41"), 9000
DOWN_IP = m.ip("12.42")  # a pod with nothing listening
REGO = Path(__file__).resolve().parents[2] / "policies" / "authz.rego"


def mesh_config(*providers: dict[str, Any]) -> m.Doc:
    """The ``istio`` ConfigMap, key ``mesh``, in the root namespace (where istiod reads MeshConfig)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump({"extensionProviders": list(providers)})}}


def http_provider(name: str, service: str = "ext-authz.app.svc.cluster.local", **extra: Any) -> dict[str, Any]:
    spec = {"service": service, "port": AUTHZ_PORT, "includeRequestHeadersInCheck": ["x-user"],
            "headersToUpstreamOnAllow": ["x-authz"], **extra}
    return {"name": name, "envoyExtAuthzHttp": spec}


def custom(name: str, provider: str, target: dict[str, str], paths: list[str]) -> m.Doc:
    return policy(name, {"targetRefs": [target], "action": "CUSTOM", "provider": {"name": provider},
                         "rules": [{"to": [{"operation": {"paths": paths}}]}]})


def provider_pods() -> list[m.Doc]:
    return [
        m.pod("ext-authz", AUTHZ_IP, ports=(AUTHZ_PORT,)),
        m.service("ext-authz", AUTHZ_VIP, [("http", AUTHZ_PORT, AUTHZ_PORT)]),
        m.pod("grpc-authz", GRPC_AUTHZ_IP, ports=(GRPC_AUTHZ_PORT,)),
        m.service("grpc-authz", GRPC_AUTHZ_VIP, [("grpc", GRPC_AUTHZ_PORT, GRPC_AUTHZ_PORT)]),
        m.pod("down", DOWN_IP, ports=(AUTHZ_PORT,)),
        m.service("down", m.ip("13.42"), [("http", AUTHZ_PORT, AUTHZ_PORT)]),
    ]


# ---- a real HTTP ext-authz server (HTTP/1.1 keep-alive, as Envoy's async client pools) ----------
@dataclass
class HttpAuthzServer:
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                self.calls.append((method, path, headers))
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(self.answer(headers))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def answer(headers: dict[str, str]) -> bytes:
        if headers.get("x-user") == "alice":
            return (b"HTTP/1.1 200 OK\r\nx-authz: ok\r\nx-not-forwarded: 1\r\nx-authz-resp: ok\r\n"
                    b"content-length: 0\r\n\r\n")
        body = b"denied by ext-authz"
        return (b"HTTP/1.1 401 Unauthorized\r\nx-ext-authz-check-result: denied\r\n"
                b"content-type: application/problem+json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
async def http_authz() -> AsyncIterator[HttpAuthzServer]:
    server = HttpAuthzServer()
    listener = await asyncio.start_server(server.handle, AUTHZ_IP, AUTHZ_PORT)
    yield server
    listener.close()


# ---- a real gRPC Authorization server (grpcio asyncio, on the test's uvloop) --------------------
Decide = Callable[[pb.CheckRequest], bool]


class GrpcAuthz(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, decide: Decide, to_client: tuple[Any, ...] = ()) -> None:
        self.decide = decide
        self.to_client = to_client  # OkHttpResponse.response_headers_to_add
        self.requests: list[pb.CheckRequest] = []
        self.hold: asyncio.Event | None = None  # set: checks wait for it (a slow provider)
        self.in_flight = 0

    async def Check(self, request: pb.CheckRequest, context: Any) -> pb.CheckResponse:
        self.requests.append(request)
        self.in_flight += 1
        try:  # the waypoint cancelling the call cancels this coroutine (grpc.aio)
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self.in_flight -= 1
        if self.decide(request):
            header = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-grpc-authz", value="yes"))
            return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                    ok_response=pb.OkHttpResponse(headers=[header],
                                                                  response_headers_to_add=self.to_client))
        denied = pb.DeniedHttpResponse(status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                                       body="grpc ext-authz says no")
        return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED), denied_response=denied)


async def start_grpc_authz(decide: Decide, to_client: tuple[Any, ...] = ()) -> tuple[GrpcAuthz, Any]:
    servicer = GrpcAuthz(decide, to_client)
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(servicer, server)
    server.add_insecure_port(f"{GRPC_AUTHZ_IP}:{GRPC_AUTHZ_PORT}")
    await server.start()
    return servicer, server


def uaex_requests(mesh: RunningMesh) -> dict[str, float]:
    """``istio_requests_total`` with ``response_flags="UAEX"``, by response code."""
    out: dict[str, float] = {}
    for family in mesh.dev.registry.collect():
        for s in family.samples:
            if s.name == "istio_requests_total" and s.labels["response_flags"] == "UAEX":
                out[s.labels["response_code"]] = out.get(s.labels["response_code"], 0) + s.value
    return out


# ---- tests -------------------------------------------------------------------------------------
async def test_http_provider_allows_alice_denies_others_with_its_401(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: HttpAuthzServer
) -> None:
    """Envoy ext_authz_http_impl.cc: 200 allows (headersToUpstreamOnAllow go upstream), another status
    denies with the server's status, body and headers; only the allowed headers are in the check."""
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        mesh_config(http_provider("sample-http", pathPrefix="/check",
                                  includeAdditionalHeadersInCheck={"x-from-waypoint": "yes"})),
        custom("ext-authz-api", "sample-http", GATEWAY_REF, ["/api/*"]),
        # CUSTOM runs first; its allow still goes through DENY (the API's evaluation order)
        policy("deny-admin", {"targetRefs": [GATEWAY_REF], "action": "DENY",
                              "rules": [{"to": [{"operation": {"paths": ["/api/admin"]}}]}]}),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        alice = await client.get(f"http://{m.V1_VIP}/api/x?q=1", headers={"x-user": "alice", "x-secret": "s"})
        bob = await client.get(f"http://{m.V1_VIP}/api/x", headers={"x-user": "bob"})
        public = await client.get(f"http://{m.V1_VIP}/public")
        admin = await client.get(f"http://{m.V1_VIP}/api/admin", headers={"x-user": "alice"})
    assert alice.status_code == 200
    seen = alice.json()["headers"]
    assert seen["x-authz"] == "ok" and "x-not-forwarded" not in seen
    assert bob.status_code == 401 and bob.content == b"denied by ext-authz"
    assert bob.headers["x-ext-authz-check-result"] == "denied"
    assert bob.headers["content-type"] == "application/problem+json"  # the server's, not the local reply's
    assert public.status_code == 200
    assert admin.status_code == 403 and admin.content == b"RBAC: access denied"
    assert echo_apps["v1"].paths() == ["/api/x?q=1", "/public"]
    # the check requests: method and path (behind pathPrefix) of the original, only allowed headers
    assert [(c[0], c[1]) for c in http_authz.calls] == [
        ("GET", "/check/api/x?q=1"), ("GET", "/check/api/x"), ("GET", "/check/api/admin")]
    first = http_authz.calls[0][2]
    assert first["host"] == m.V1_VIP and first["x-user"] == "alice" and first["content-length"] == "0"
    assert first["x-from-waypoint"] == "yes" and "x-secret" not in first
    assert uaex_requests(mesh) == {"401": 1}
    dump = mesh.waypoint("waypoint").config_dump()["ext_authz"]
    assert dump["providers"] == {"sample-http": "http"} and (dump["ok"], dump["denied"]) == (2, 1)


async def test_provider_down_is_status_on_error_or_fail_open(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """Envoy ext_authz.cc onComplete Error: ``failure_mode_allow`` lets it on, else ``status_on_error``
    (istiod leaves it unset: Envoy's 403) with no body."""
    down = "down.app.svc.cluster.local"
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        mesh_config(http_provider("closed", down), http_provider("open", down, failOpen=True),
                    http_provider("teapot", down, statusOnError="503")),
        custom("v1-closed", "closed", service_ref("echo-v1"), ["/*"]),
        custom("v2-open", "open", service_ref("echo-v2"), ["/*"]),
        custom("mirror-503", "teapot", service_ref("echo-mirror"), ["/*"]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        closed = await client.get(f"http://{m.V1_VIP}/a")
        opened = await client.get(f"http://{m.V2_VIP}/b")
        status = await client.get(f"http://{m.MIRROR_VIP}/c")
    assert closed.status_code == 403 and closed.content == b""
    assert opened.status_code == 200 and echo_apps["v2"].paths() == ["/b"]
    assert status.status_code == 503
    assert echo_apps["v1"].paths() == [] and echo_apps["mirror"].paths() == []
    assert mesh.waypoint("waypoint").ext_authz.failure_mode_allowed == 1


async def test_slow_provider_times_out_to_status_on_error(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: HttpAuthzServer
) -> None:
    http_authz.delay_s = 5.0
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        mesh_config(http_provider("slow", timeout="0.2s")),
        custom("all", "slow", GATEWAY_REF, ["/*"]),
    ))
    loop = asyncio.get_running_loop()
    async with mesh.client(m.CLIENT_IP) as client:
        started = loop.time()
        r = await client.get(f"http://{m.V1_VIP}/x", headers={"x-user": "alice"})
        elapsed = loop.time() - started
    assert r.status_code == 403 and elapsed < 3.0
    assert echo_apps["v1"].paths() == [] and len(http_authz.calls) == 1


async def test_grpc_provider_decides_on_path_and_source_principal(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """envoy.service.auth.v3 Check: the CheckRequest carries the client's SPIFFE ID (source.principal),
    the path and headers; OK adds ok_response headers upstream, a denial's status/body reach the client."""

    def decide(req: pb.CheckRequest) -> bool:
        attrs = req.attributes
        return bool(attrs.source.principal == m.CLIENT_ID and attrs.request.http.path.startswith("/allowed"))

    servicer, server = await start_grpc_authz(decide)
    try:
        mesh = await make_mesh(m.standard(
            *provider_pods(),
            m.pod("other", m.ip("12.2"), sa="other"),
            mesh_config({"name": "grpc", "envoyExtAuthzGrpc": {"service": "grpc-authz.app.svc.cluster.local",
                                                               "port": GRPC_AUTHZ_PORT, "timeout": "5s"}}),
            custom("grpc-all", "grpc", service_ref("echo-v1"), ["/*"]),
        ))
        async with mesh.client(m.CLIENT_IP) as client:
            ok = await client.get(f"http://{m.V1_VIP}/allowed/1", headers={"x-user": "alice"})
            no = await client.get(f"http://{m.V1_VIP}/other")
        async with mesh.client(m.ip("12.2")) as other:
            stranger = await other.get(f"http://{m.V1_VIP}/allowed/2")
    finally:
        await server.stop(None)
    assert ok.status_code == 200 and ok.json()["headers"]["x-grpc-authz"] == "yes"
    assert no.status_code == 403 and no.content == b"grpc ext-authz says no"
    assert stranger.status_code == 403
    assert echo_apps["v1"].paths() == ["/allowed/1"]
    first = servicer.requests[0].attributes
    assert first.destination.principal == m.WAYPOINT_ID
    assert first.source.address.socket_address.address == m.CLIENT_IP
    assert first.request.http.method == "GET" and first.request.http.headers["x-user"] == "alice"
    assert first.request.http.headers[":authority"] == m.V1_VIP


async def test_requests_not_matching_custom_rules_never_reach_the_provider(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: HttpAuthzServer
) -> None:
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        mesh_config(http_provider("sample-http")),
        custom("v1-secure", "sample-http", service_ref("echo-v1"), ["/secure/*"]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        for i in range(3):
            assert (await client.get(f"http://{m.V1_VIP}/open/{i}")).status_code == 200
            assert (await client.get(f"http://{m.V2_VIP}/secure/{i}")).status_code == 200  # another service
        assert (await client.get(f"http://{m.V1_VIP}/secure/x", headers={"x-user": "bob"})).status_code == 401
    assert len(http_authz.calls) == 1


async def test_provider_added_at_runtime_replaces_the_fail_closed_deny(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: HttpAuthzServer
) -> None:
    """A CUSTOM policy naming an unknown provider denies what it matches (istiod's deny rules for a
    bad CUSTOM action); once the mesh config names the provider, it is asked instead."""
    docs = [*m.standard(*provider_pods()), custom("all", "later", GATEWAY_REF, ["/*"])]
    mesh = await make_mesh(docs)
    async with mesh.client(m.CLIENT_IP) as client:
        before = await client.get(f"http://{m.V1_VIP}/x", headers={"x-user": "alice"})
        mesh.write([*docs, mesh_config(http_provider("later"))])
        await mesh.reload()
        after = await client.get(f"http://{m.V1_VIP}/y", headers={"x-user": "alice"})
    assert before.status_code == 403 and before.content == b"RBAC: access denied"
    assert after.status_code == 200 and after.json()["headers"]["x-authz"] == "ok"


async def test_rego_policy_through_a_grpc_provider(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    """OPA's shape: the CheckRequest as JSON is Rego's ``input`` (opa-envoy-plugin); policies/authz.rego."""
    module = REGO.read_text()

    def decide(req: pb.CheckRequest) -> bool:
        rego = regopy.Interpreter()
        rego.add_module("authz", module)
        rego.set_input(json_format.MessageToDict(req, preserving_proto_field_name=True))
        result = str(rego.query("data.envoy.authz.allow"))
        return result != "undefined" and bool(json.loads(result)["expressions"] == [True])

    _servicer, server = await start_grpc_authz(decide)
    try:
        mesh = await make_mesh(m.standard(
            *provider_pods(),
            mesh_config({"name": "opa.local", "envoyExtAuthzGrpc": {"service": GRPC_AUTHZ_IP,
                                                                    "port": GRPC_AUTHZ_PORT}}),
            custom("opa", "opa.local", GATEWAY_REF, ["/*"]),
        ))
        async with mesh.client(m.CLIENT_IP) as client:
            public = await client.get(f"http://{m.V1_VIP}/public/page")
            post = await client.post(f"http://{m.V1_VIP}/public/page", content=b"x")
            alice = await client.post(f"http://{m.V1_VIP}/private", content=b"x", headers={"x-user": "alice"})
    finally:
        await server.stop(None)
    assert (public.status_code, post.status_code, alice.status_code) == (200, 403, 200)
    assert echo_apps["v1"].paths() == ["/public/page", "/private"]


async def test_grpc_client_denied_by_http_provider_gets_grpc_status(
    make_mesh: MeshFactory, grpc_server: list[bytes], http_authz: HttpAuthzServer
) -> None:
    """A gRPC client gets Envoy's gRPC local reply: the provider's 401 becomes UNAUTHENTICATED (16,
    ``httpToGrpcStatus``) with its body as grpc-message; metadata reaches the check as headers."""
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        m.pod("grpc-echo", GRPC_IP, ports=(GRPC_PORT,)),
        m.service("grpc-echo", GRPC_VIP, [("grpc", GRPC_PORT, GRPC_PORT)]),
        mesh_config(http_provider("sample-http")),
        custom("grpc-custom", "sample-http", service_ref("grpc-echo"), ["/test.Echo/*"]),
    ))
    async with socks_forwarder(mesh.socks, (GRPC_VIP, GRPC_PORT), m.CLIENT_IP) as local:
        def calls() -> None:
            with grpc.insecure_channel(f"{local[0]}:{local[1]}") as ch:
                unary = ch.unary_unary("/test.Echo/Unary")
                assert unary(b"hi", timeout=10, metadata=(("x-user", "alice"),)) == b"echo:hi"
                with pytest.raises(grpc.RpcError) as info:
                    unary(b"no", timeout=10, metadata=(("x-user", "bob"),))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
                assert info.value.details() == "denied by ext-authz"  # type: ignore[attr-defined]

        await asyncio.to_thread(calls)
    assert grpc_server == [b"hi"]
    assert [c[1] for c in http_authz.calls] == ["/test.Echo/Unary", "/test.Echo/Unary"]


# ---- headers for the client on allow; a pending check cancelled when its client goes away ------
async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_http_headers_to_downstream_on_allow_reach_the_client(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], http_authz: HttpAuthzServer
) -> None:
    """``headersToDownstreamOnAllow`` is Envoy's ``allowed_client_headers_on_success``
    (ext_authz_http_impl.cc ``SuccessResponse``: matching headers "appended (using addCopy) to the
    encoded response headers"; ext_authz.cc ``encodeHeaders``): on the app's response, not upstream."""
    mesh = await make_mesh(m.standard(
        *provider_pods(),
        mesh_config(http_provider("sample-http", headersToDownstreamOnAllow=["x-authz-resp"])),
        custom("ext-authz-api", "sample-http", GATEWAY_REF, ["/api/*"]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        alice = await client.get(f"http://{m.V1_VIP}/api/x", headers={"x-user": "alice"})
        again = await client.get(f"http://{m.V1_VIP}/api/y", headers={"x-user": "alice"})
        public = await client.get(f"http://{m.V1_VIP}/public")
        bob = await client.get(f"http://{m.V1_VIP}/api/x", headers={"x-user": "bob"})
    assert alice.status_code == 200 and alice.headers.get_list("x-authz-resp") == ["ok"]
    assert "x-not-forwarded" not in alice.headers and "x-authz" not in alice.headers  # not matching
    seen = alice.json()["headers"]
    assert seen["x-authz"] == "ok" and "x-authz-resp" not in seen  # to the client only
    assert again.headers.get_list("x-authz-resp") == ["ok"]  # per request, not carried over
    assert public.status_code == 200 and "x-authz-resp" not in public.headers  # no check, nothing added
    assert bob.status_code == 401 and "x-authz-resp" not in bob.headers
    assert mesh.waypoint("waypoint").ext_authz._carrying == 0


async def test_grpc_response_headers_to_add_reach_the_client(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """OkHttpResponse.response_headers_to_add (ext_authz_grpc_impl.cc ``copyOkResponseMutations``):
    no ``append`` and APPEND_IF_EXISTS_OR_ADD add a line; ``append: false`` and OVERWRITE_IF_EXISTS_OR_ADD
    replace the app's; ADD_IF_ABSENT only when the app sent none; OVERWRITE_IF_EXISTS only when it did."""
    action = base_pb2.HeaderValueOption.HeaderAppendAction

    def option(key: str, value: str, **kw: Any) -> Any:
        return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), **kw)

    to_client = (
        option("x-grpc-resp", "a"),
        option("Content-Type", "text/from-authz", append=wrappers_pb2.BoolValue(value=False)),
        option("x-absent", "added", append_action=action.ADD_IF_ABSENT),
        option("content-type", "ignored", append_action=action.ADD_IF_ABSENT),
        option("x-missing", "ignored", append_action=action.OVERWRITE_IF_EXISTS),
        option("connection", "close"),  # hop-by-hop: never added to a response
    )
    _servicer, server = await start_grpc_authz(lambda req: True, to_client)
    try:
        mesh = await make_mesh(m.standard(
            *provider_pods(),
            mesh_config({"name": "grpc", "envoyExtAuthzGrpc": {"service": "grpc-authz.app.svc.cluster.local",
                                                               "port": GRPC_AUTHZ_PORT, "timeout": "5s"}}),
            custom("grpc-all", "grpc", service_ref("echo-v1"), ["/*"]),
        ))
        async with mesh.client(m.CLIENT_IP) as client:
            r = await client.get(f"http://{m.V1_VIP}/x")
    finally:
        await server.stop(None)
    assert r.status_code == 200 and r.json()["path"] == "/x"
    assert r.headers.get_list("x-grpc-resp") == ["a"]
    assert r.headers.get_list("content-type") == ["text/from-authz"]  # replaced the app's JSON type
    assert r.headers.get_list("x-absent") == ["added"] and "x-missing" not in r.headers
    assert "x-grpc-resp" not in r.json()["headers"]


async def test_pending_check_is_cancelled_when_the_client_goes_away(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    """Envoy ext_authz.cc ``onDestroy``: a check still ``Calling`` is cancelled, so a slow provider does
    not gather checks nobody waits for: the provider sees its call cancelled, the waypoint holds nothing."""
    servicer, server = await start_grpc_authz(lambda req: True)
    servicer.hold = asyncio.Event()
    try:
        mesh = await make_mesh(m.standard(
            *provider_pods(),
            mesh_config({"name": "grpc", "envoyExtAuthzGrpc": {"service": "grpc-authz.app.svc.cluster.local",
                                                               "port": GRPC_AUTHZ_PORT, "timeout": "30s"}}),
            custom("grpc-all", "grpc", service_ref("echo-v1"), ["/*"]),
        ))
        ext_authz = mesh.waypoint("waypoint").ext_authz

        async def abandoned(path: str) -> None:
            async with mesh.client(m.CLIENT_IP) as client:
                await client.get(f"http://{m.V1_VIP}{path}", timeout=30.0)

        clients = [asyncio.create_task(abandoned(f"/slow/{i}")) for i in range(3)]
        await until(lambda: servicer.in_flight == 3 and ext_authz.pending == 3, "three checks in flight")
        for task in clients:  # the clients give up: httpx closes their connections
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await until(lambda: ext_authz.pending == 0, "the waypoint to drop its checks")
        await until(lambda: servicer.in_flight == 0, "the provider to see the calls cancelled")
        assert ext_authz.cancelled == 3 and ext_authz.ok == 0
        servicer.hold.set()  # a provider that answers again: the waypoint still serves
        async with mesh.client(m.CLIENT_IP) as client:
            assert (await client.get(f"http://{m.V1_VIP}/fast")).status_code == 200
    finally:
        await server.stop(None)
    assert echo_apps["v1"].paths() == ["/fast"]
