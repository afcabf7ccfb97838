"""MeshConfig ``extensionProviders``, the engine's CUSTOM answer, and the two check protocols, in memory.

Sources: ``IS:pilot/pkg/security/authz/builder/extauthz.go`` (validation, defaults, header patterns),
``builder.go`` ``buildHTTP``/``buildTCP`` (providers per workload, ordering, bad CUSTOM -> deny),
Envoy ``ext_authz_http_impl.cc`` (``check``, ``toResponse``) and ``ext_authz_grpc_impl.cc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2 as pb  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]

from tests.policy import world
from waypoint.errors import ManifestError
from waypoint.mesh.folder import FolderSource
from waypoint.mesh.snapshot import snapshot_from_docs
from waypoint.policy import extauthz_grpc, extauthz_http
from waypoint.policy.authz import WaypointAuthorizer
from waypoint.policy.extauthz import CheckInput, CheckStatus
from waypoint.policy.meshconfig import (
    HeaderPatterns,
    mesh_config_from_snapshot,
    parse_mesh_config,
    validate_mesh_configmap,
)
from waypoint.roles.runtime import config_registry


def configmap(mesh: Any, name: str = "istio", ns: str = "istio-system") -> dict[str, Any]:
    text = mesh if isinstance(mesh, str) else yaml.safe_dump(mesh)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"mesh": text}}


def http(name: str = "ext", **spec: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 8000, **spec}}


def grpc(name: str = "opa", **spec: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": "opa.opa-system.svc.cluster.local", "port": 9191, **spec}}


# ---- parsing and validation --------------------------------------------------------------------
def test_http_provider_fields_and_istio_defaults() -> None:
    cfg = parse_mesh_config(yaml.safe_dump({"extensionProviders": [
        http(timeout="0.5s", pathPrefix="/check", failOpen=True, statusOnError="401",
             includeRequestHeadersInCheck=["x-user", "x-ext-*", "*-token"],
             includeAdditionalHeadersInCheck={"X-Extra": "1"}, headersToUpstreamOnAllow=["x-authz"],
             headersToDownstreamOnDeny=["x-reason"]),
        grpc(),
        {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system", "port": 9411}},  # not ext-authz: ignored
    ]}))
    assert list(cfg.extension_providers) == ["ext", "opa"]
    ext, opa = cfg.extension_providers["ext"], cfg.extension_providers["opa"]
    assert (ext.kind, ext.timeout_s, ext.path_prefix, ext.fail_open, ext.status_on_error) == ("http", 0.5, "/check",
                                                                                              True, 401)
    assert ext.additional_headers == (("x-extra", "1"),)
    assert ext.request_headers.matches("x-user") and ext.request_headers.matches("x-ext-id")
    assert ext.request_headers.matches("id-token") and not ext.request_headers.matches("cookie")
    assert (opa.kind, opa.timeout_s, opa.status_on_error, opa.fail_open) == ("grpc", 600.0, 403, False)
    assert opa.hostname == "opa.opa-system.svc.cluster.local"


def test_deprecated_include_headers_in_check_only_when_the_new_field_is_unset() -> None:
    old = parse_mesh_config({"extensionProviders": [http(includeHeadersInCheck=["a"])]})
    both = parse_mesh_config({"extensionProviders": [http(includeHeadersInCheck=["a"],
                                                          includeRequestHeadersInCheck=["b"])]})
    assert old.extension_providers["ext"].request_headers == HeaderPatterns.of(("a",))
    assert both.extension_providers["ext"].request_headers == HeaderPatterns.of(("b",))


@pytest.mark.parametrize(("provider", "field"), [
    (http(port=0), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.port"),
    (grpc(port=70000), "data.mesh.extensionProviders[0].envoyExtAuthzGrpc.port"),
    (http(service=""), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.service"),
    (http(statusOnError="999"), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.statusOnError"),
    (http(statusOnError="abc"), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.statusOnError"),
    (http(pathPrefix="check"), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.pathPrefix"),
    (http(timeout="soon"), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.timeout"),
    (http(failOpen="yes"), "data.mesh.extensionProviders[0].envoyExtAuthzHttp.failOpen"),
    (http(headersToUpstreamOnAllow=["*"]),
     "data.mesh.extensionProviders[0].envoyExtAuthzHttp.headersToUpstreamOnAllow[0]"),
    (grpc(pathPrefix="/x"), "data.mesh.extensionProviders[0].envoyExtAuthzGrpc.pathPrefix"),  # HTTP-only field
    ({"envoyExtAuthzHttp": {"service": "a", "port": 1}}, "data.mesh.extensionProviders[0].name"),
])
def test_bad_provider_is_rejected_naming_the_field(provider: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as info:
        validate_mesh_configmap(configmap({"extensionProviders": [provider]}))
    assert info.value.field == field


def test_duplicate_provider_names_are_rejected() -> None:
    with pytest.raises(ManifestError) as info:
        parse_mesh_config({"extensionProviders": [http("x"), grpc("x")]})
    assert info.value.field == "data.mesh.extensionProviders[1].name"


def test_only_the_istio_configmap_is_checked() -> None:
    validate_mesh_configmap(configmap("not: [valid", name="other"))  # someone else's ConfigMap: accepted
    with pytest.raises(ManifestError) as info:
        validate_mesh_configmap(configmap("extensionProviders: [valid"))
    assert info.value.field == "data.mesh"


def test_folder_rejects_a_bad_provider_naming_file_object_and_field(tmp_path: Path) -> None:
    docs = [configmap({"extensionProviders": [http(port="eighty")]})]
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
    snap = FolderSource(tmp_path, registry=config_registry()).reload()
    [problem] = snap.problems
    assert (problem.file, problem.kind, problem.namespace, problem.name) == ("mesh.yaml", "ConfigMap",
                                                                             "istio-system", "istio")
    assert problem.field == "data.mesh.extensionProviders[0].envoyExtAuthzHttp.port"


def test_mesh_config_comes_from_the_root_namespace_only() -> None:
    docs = [configmap({"extensionProviders": [grpc("root")]}),
            configmap({"extensionProviders": [grpc("elsewhere")]}, ns="ns1")]
    snap = snapshot_from_docs(docs, registry=config_registry())
    assert list(mesh_config_from_snapshot(snap, "istio-system").extension_providers) == ["root"]
    assert list(mesh_config_from_snapshot(snap, "ns1").extension_providers) == ["elsewhere"]
    assert not mesh_config_from_snapshot(snap, "other").extension_providers


# ---- the engine: which providers to ask ----------------------------------------------------------
SVC_B = {"targetRefs": [{"kind": "Service", "group": "", "name": "b"}]}


def custom(name: str, provider: str, paths: list[str], **extra: Any) -> dict[str, Any]:
    return world.policy(name, {**SVC_B, "action": "CUSTOM", "provider": {"name": provider},
                               "rules": [{"to": [{"operation": {"paths": paths}}]}]}, **extra)


def authorizer(*policies: dict[str, Any], providers: dict[str, str]) -> tuple[WaypointAuthorizer, Any]:
    snap = world.snapshot(policies)
    assert not snap.problems
    return WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap), providers=providers), world.service(snap)


def test_custom_check_names_matching_providers_in_name_order() -> None:
    """builder.go buildHTTP: one ext_authz per provider, sorted by provider name."""
    authz, svc = authorizer(custom("z", "zeta", ["/a*"]), custom("a", "alpha", ["/ab"]), custom("n", "zeta", ["/x"]),
                            providers={"alpha": "http", "zeta": "grpc"})
    assert authz.custom_check(svc, world.request(path="/ab")) == ("alpha", "zeta")
    assert authz.custom_check(svc, world.request(path="/a")) == ("zeta",)
    assert authz.custom_check(svc, world.request(path="/other")) == ()
    assert authz.has_custom(svc) and not authz.has_custom(None)
    # configured CUSTOM is the filter's: RBAC does not deny for it
    assert authz.check_request(svc, world.request(path="/ab")).allowed


def test_unconfigured_provider_fails_closed_and_dry_run_is_not_asked() -> None:
    authz, svc = authorizer(custom("gone", "missing", ["/m"]),
                            custom("dry", "known", ["/d"], annotations={"istio.io/dry-run": "true"}),
                            providers={"known": "http"})
    denied = authz.check_request(svc, world.request(path="/m"))
    assert not denied.allowed and denied.reason == "CUSTOM provider missing not available"
    assert authz.custom_check(svc, world.request(path="/d")) == ()
    assert authz.check_request(svc, world.request(path="/d")).dry_run_denied_by == ("ns1/dry",)


def test_custom_allow_still_meets_deny() -> None:
    deny = world.policy("deny", {**SVC_B, "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]})
    authz, svc = authorizer(custom("c", "ext", ["/x"]), deny, providers={"ext": "http"})
    assert authz.custom_check(svc, world.request(path="/x")) == ("ext",)
    assert not authz.check_request(svc, world.request(path="/x")).allowed


def test_tcp_skips_http_providers_and_denies_for_grpc_ones() -> None:
    """builder.go buildTCP: an HTTP provider's CUSTOM is ignored on TCP; a gRPC one would run the
    network ext_authz, which this data plane does not build yet: fail closed."""
    rules = [{"to": [{"operation": {"ports": ["18080"]}}]}]
    for kind, allowed in (("http", True), ("grpc", False)):
        pol = world.policy("c", {**SVC_B, "action": "CUSTOM", "provider": {"name": "p"}, "rules": rules})
        authz, svc = authorizer(pol, providers={"p": kind})
        assert authz.check_connection(svc, world.conn(destination_ip=world.SERVICE_VIP)).allowed is allowed


# ---- the HTTP check (Envoy ext_authz_http_impl.cc) ------------------------------------------------
REQUEST = CheckInput("POST", "/api/x?y=1", "b.ns1:8080", "http",
                     (("x-user", "alice"), ("authorization", "Bearer t"), ("cookie", "c"), ("content-length", "5"),
                      ("x-ext-a", "1"), ("x-ext-a", "2")),
                     source_address=("10.0.1.10", 40000), source_principal="spiffe://cluster.local/ns/ns1/sa/a",
                     destination_address=("10.96.0.10", 8080), destination_principal="spiffe://cluster.local/ns/ns1/sa/w")


def provider(**spec: Any) -> Any:
    return parse_mesh_config({"extensionProviders": [http(**spec)]}).extension_providers["ext"]


def test_http_check_request_keeps_method_prefixes_path_and_filters_headers() -> None:
    p = provider(pathPrefix="/check", includeRequestHeadersInCheck=["x-user", "x-ext-*"],
                 includeAdditionalHeadersInCheck={"x-user": "overwritten", "x-added": "1"})
    method, path, headers = extauthz_http.check_request(p, REQUEST)
    assert (method, path) == ("POST", "/check/api/x?y=1")
    assert dict(headers) == {"host": "b.ns1:8080", "content-length": "0", "authorization": "Bearer t",
                             "x-user": "overwritten", "x-ext-a": "1,2", "x-added": "1"}


def test_http_check_result_statuses() -> None:
    p = provider(headersToUpstreamOnAllow=["x-authz"])
    ok = extauthz_http.check_result(p, 200, (("x-authz", "ok"), ("x-other", "1"),
                                             ("x-envoy-auth-headers-to-remove", "cookie, x-user")), b"")
    assert ok.status is CheckStatus.OK and ok.upstream_set == (("x-authz", "ok"),)
    assert ok.upstream_remove == ("cookie", "x-user")
    assert extauthz_http.check_result(p, 503, (), b"").status is CheckStatus.ERROR
    denied = extauthz_http.check_result(p, 302, (("location", "/login"), ("host", "h"), ("content-length", "2"),
                                                 ("x-why", "no")), b"no")
    assert (denied.status, denied.http_status, denied.body) == (CheckStatus.DENIED, 302, b"no")
    assert denied.client_headers == (("location", "/login"), ("x-why", "no"))  # all but host (list unset)
    only = extauthz_http.check_result(provider(headersToDownstreamOnDeny=["x-reason"]), 403,
                                      (("x-reason", "r"), ("x-why", "no"), ("www-authenticate", "Bearer")), b"")
    assert only.client_headers == (("x-reason", "r"), ("www-authenticate", "Bearer"))


# ---- the gRPC check (Envoy ext_authz_grpc_impl.cc, check_request_utils.cc) ------------------------
def test_grpc_check_request_attributes() -> None:
    req = extauthz_grpc.check_request(REQUEST, 1700000000.5).attributes
    assert req.source.principal == "spiffe://cluster.local/ns/ns1/sa/a"
    assert (req.source.address.socket_address.address, req.source.address.socket_address.port_value) == (
        "10.0.1.10", 40000)
    assert req.destination.principal == "spiffe://cluster.local/ns/ns1/sa/w"
    h = req.request.http
    assert (h.method, h.path, h.host, h.scheme, h.protocol, h.size) == ("POST", "/api/x?y=1", "b.ns1:8080", "http",
                                                                        "HTTP/1.1", 5)
    assert h.headers[":path"] == "/api/x?y=1" and h.headers["x-ext-a"] == "1,2" and h.headers["cookie"] == "c"
    assert req.request.time.seconds == 1700000000


def test_grpc_check_result() -> None:
    set_h = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="X-Set", value="1"))
    add_h = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-add", value="2"))
    add_h.append.value = True
    ok = extauthz_grpc.check_result(pb.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=pb.OkHttpResponse(headers=[set_h, add_h], headers_to_remove=["Cookie"])))
    assert (ok.status, ok.upstream_set, ok.upstream_append, ok.upstream_remove) == (
        CheckStatus.OK, (("x-set", "1"),), (("x-add", "2"),), ("cookie",))
    plain = extauthz_grpc.check_result(pb.CheckResponse(status=status_pb2.Status(code=7)))
    assert (plain.status, plain.http_status) == (CheckStatus.DENIED, 403)  # DeniedHttpResponse.status unset
    teapot = extauthz_grpc.check_result(pb.CheckResponse(
        status=status_pb2.Status(code=16),
        denied_response=pb.DeniedHttpResponse(status=http_status_pb2.HttpStatus(code=401), body="who?",
                                              headers=[set_h])))
    assert (teapot.http_status, teapot.body, teapot.client_headers) == (401, b"who?", (("x-set", "1"),))
