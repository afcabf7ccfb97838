"""Telemetry API ``accessLogging`` and the mesh config's access-log fields, resolved for a waypoint as
istiod does (``IS:pilot/pkg/model/telemetry.go`` ``applicableTelemetries``/``mergeLogs``;
``telemetry_logging.go`` formats), and the formatter and filter expressions they compile to.
In memory, table-driven; the end-to-end lines are in ``tests/waypoint/test_access_log.py``."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from waypoint.errors import ManifestError
from waypoint.l7.filter import DownstreamInfo, RequestContext
from waypoint.l7.message import RequestHead, ResponseHead
from waypoint.l7.routing.decision import DecisionKind, RouteDecision, ServiceRef
from waypoint.l7.upstream import UpstreamTarget
from waypoint.mesh.model import KubeObject, MeshSnapshot
from waypoint.policy.meshconfig import EMPTY_MESH_CONFIG, MeshConfig, parse_mesh_config
from waypoint.policy.telemetry import (
    AccessLogEntry,
    access_logs_for,
    applicable_telemetries,
    merge_logs,
    validate_telemetry,
)
from waypoint.telemetry.access_log_format import FormatError, JsonFormat, LineFacts, TextFormat
from waypoint.telemetry.log_expression import ExpressionError, compile_expression

ROOT = "istio-system"
GW = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}


def telemetry(name: str, ns: str, spec: dict[str, Any], created: str = "") -> KubeObject:
    body = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}
    return KubeObject("Telemetry", ns, name, {}, {}, created or None, body, "")


def snapshot(*objs: KubeObject) -> MeshSnapshot:
    return MeshSnapshot(raw={"Telemetry": tuple(objs)})


def logging(*providers: str, **extra: Any) -> dict[str, Any]:
    return {"accessLogging": [{"providers": [{"name": p} for p in providers], **extra}]}


def entry(*providers: str, disabled: bool = False, mode: str = "CLIENT_AND_SERVER",
          expression: str | None = None) -> AccessLogEntry:
    return AccessLogEntry(providers, disabled, mode, expression)


# ---- mergeLogs (istiod's semantics, mode SERVER) --------------------------------------------------
@pytest.mark.parametrize(("levels", "defaults", "want"), [
    ([], (), {}),
    ([], ("envoy",), {"envoy": None}),  # defaultProviders alone
    ([(entry("envoy"),)], (), {"envoy": None}),
    ([(entry("envoy"),), (entry("envoy", disabled=True),)], (), {}),  # a lower level disables
    ([(entry("envoy"),), (entry(disabled=True),)], (), {}),  # no providers: the inherited ones
    ([(entry("envoy"),), (entry("other"),)], (), {"other": None}),  # lower providers replace
    ([(entry("envoy"),), (entry(expression="response.code >= 400"),)], (), {"envoy": None}),
    ([(entry("envoy", expression="response.code >= 400"),)], (), {"envoy": "response.code >= 400"}),
    ([(entry("envoy", mode="CLIENT"),)], (), {}),  # the waypoint is a server
    ([(entry("envoy", mode="SERVER"),)], (), {"envoy": None}),
    ([(entry(disabled=True),)], ("envoy",), {}),
])
def test_merge_logs_as_istiod(levels: list[tuple[AccessLogEntry, ...]], defaults: tuple[str, ...],
                              want: dict[str, str | None]) -> None:
    assert merge_logs(levels, defaults) == want


def test_applicable_telemetries_root_then_namespace_then_gateway() -> None:
    root = telemetry("mesh", ROOT, logging("envoy"))
    ns_wide = telemetry("ns", "app", logging("envoy"))
    for_gw = telemetry("gw", "app", {"targetRefs": [GW], **logging("envoy")})
    other_gw = telemetry("other", "app", {"targetRefs": [{**GW, "name": "other"}], **logging("envoy")})
    pods = telemetry("pods", "app", {"selector": {"matchLabels": {"app": "x"}}, **logging("envoy")})
    newer = telemetry("a-newer", "app", logging("envoy"), created="2030-01-01T00:00:00Z")
    older = telemetry("z-older", "app", logging("envoy"), created="2020-01-01T00:00:00Z")
    assert applicable_telemetries(snapshot(for_gw, other_gw, pods, ns_wide, root), "app", "waypoint", ROOT) == [
        root, ns_wide, for_gw]
    assert applicable_telemetries(snapshot(newer, older), "app", "waypoint", ROOT) == [older]


# ---- access_logs_for: Telemetry API over the legacy mesh fields ---------------------------------
def mesh(**fields: Any) -> MeshConfig:
    return parse_mesh_config(fields)


def paths(specs: Any) -> list[str]:
    return [s.path for s in specs]


def test_legacy_mesh_fields_and_the_dev_default() -> None:
    none = snapshot()
    assert access_logs_for(none, EMPTY_MESH_CONFIG, "app", "waypoint", ROOT) == ()  # Istio's default: off
    assert paths(access_logs_for(none, EMPTY_MESH_CONFIG, "app", "waypoint", ROOT, "/dev/stdout")) == ["/dev/stdout"]
    assert paths(access_logs_for(none, mesh(accessLogFile="/tmp/x"), "app", "waypoint", ROOT)) == ["/tmp/x"]
    assert access_logs_for(none, mesh(accessLogFile=""), "app", "waypoint", ROOT, "/dev/stdout") == ()


def test_telemetry_providers_and_filters() -> None:
    json_file = {"path": "/tmp/f.log", "logFormat": {"labels": {"c": "%RESPONSE_CODE%"}}}
    config = mesh(extensionProviders=[{"name": "file", "envoyFileAccessLog": json_file},
                                      {"name": "otel", "envoyOtelAls": {"service": "x", "port": 4317}}])
    snap = snapshot(telemetry("gw", "app", {"targetRefs": [GW], "accessLogging": [
        {"providers": [{"name": "envoy"}, {"name": "file"}, {"name": "otel"}],
         "filter": {"expression": "response.code >= 500"}}]}))
    specs = {s.path: s for s in access_logs_for(snap, config, "app", "waypoint", ROOT)}
    assert set(specs) == {"/dev/stdout", "/tmp/f.log"}  # otel is not a file provider: skipped (logged)
    assert specs["/tmp/f.log"].expression == "response.code >= 500"
    assert isinstance(specs["/tmp/f.log"].format, JsonFormat)
    assert isinstance(specs["/dev/stdout"].format, TextFormat)  # built-in envoy: the mesh's TEXT format


def test_telemetry_disabling_wins_over_the_mesh_file() -> None:
    snap = snapshot(telemetry("ns", "app", {"accessLogging": [{"providers": [{"name": "envoy"}], "disabled": True}]}))
    assert access_logs_for(snap, mesh(accessLogFile="/tmp/x"), "app", "waypoint", ROOT) == ()


# ---- validation: the field of the problem is named ----------------------------------------------
@pytest.mark.parametrize(("spec", "field"), [
    ({"bogus": 1}, "spec.bogus"),
    ({"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}]}, "spec.targetRefs[0].kind"),
    ({"targetRef": {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "x"}}, "spec.targetRef.kind"),
    ({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [GW]}, "spec"),
    ({"accessLogging": [{"providers": [{"name": "envoy"}], "disabled": "yes"}]}, "spec.accessLogging[0].disabled"),
    ({"accessLogging": [{"match": {"mode": "BOTH"}}]}, "spec.accessLogging[0].match.mode"),
    ({"accessLogging": [{"filter": {"expression": "response.flags == 1"}}]},
     "spec.accessLogging[0].filter.expression"),
    ({"accessLogging": [{"providers": [{}]}]}, "spec.accessLogging[0].providers[0].name"),
    ({"accessLogging": [{"sample": 1}]}, "spec.accessLogging[0].sample"),
])
def test_bad_telemetry_rejected_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as e:
        validate_telemetry(telemetry("t", "app", spec).body)
    assert e.value.field == field


def test_good_telemetry_accepted() -> None:
    validate_telemetry(telemetry("t", "app", {"targetRefs": [GW], "metrics": [], "tracing": [], "accessLogging": [
        {"match": {"mode": "SERVER"}, "providers": [{"name": "envoy"}],
         "filter": {"expression": "response.code >= 400 && request.headers['x-debug'] != 'off'"}}]}).body)


@pytest.mark.parametrize(("mesh_fields", "field"), [
    ({"accessLogFormat": "%NOPE%"}, "data.mesh.accessLogFormat"),
    ({"accessLogFormat": "%REQ%"}, "data.mesh.accessLogFormat"),
    ({"accessLogEncoding": "XML"}, "data.mesh.accessLogEncoding"),
    ({"accessLogEncoding": "JSON", "accessLogFormat": '{"a": "%NOPE%"}'}, "data.mesh.accessLogFormat"),
    ({"extensionProviders": [{"name": "f", "envoyFileAccessLog": {"logFormat": {"text": "%X%"}}}]},
     "data.mesh.extensionProviders[0].envoyFileAccessLog.logFormat.text"),
])
def test_bad_mesh_access_log_fields_named(mesh_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_mesh_config(mesh_fields)
    assert e.value.field == field


# ---- the formatter (Envoy's command operators) --------------------------------------------------
SVC = ServiceRef("app", "echo", 80)


def request(status: int | None = 200, headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    info = DownstreamInfo(("10.0.0.1", 40000), "spiffe://cluster.local/ns/app/sa/sleep", SVC, ("10.96.0.1", 80))
    ctx = RequestContext(info, RequestHead("GET", "/a?b=1", "echo.app", headers or [
        (b"user-agent", b"curl/8"), (b"x-request-id", b"rid")]), time.monotonic())
    ctx.route = RouteDecision(DecisionKind.FORWARD, backend=SVC)
    if status is not None:
        ctx.response = ResponseHead(status, [])
    ctx.upstream = SimpleNamespace(target=UpstreamTarget("10.1.0.5", 8080, SVC))
    return ctx


def facts(status: int = 200, details: str | None = "via_upstream", wall: float = 1700000000.25) -> LineFacts:
    return LineFacts(status, "-", details, 12, 3, wall, "cluster.local")


def test_custom_text_format_operators() -> None:
    fmt = TextFormat("%REQ(X-MISSING?USER-AGENT)% %REQ(USER-AGENT):3% %RESP(SERVER)% %START_TIME(%s.%3f)% "
                     "%DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_CLUSTER% %ROUTE_NAME% %PROTOCOL%")
    assert fmt(request(), facts()) == ("curl/8 cur - 1700000000.250 spiffe://cluster.local/ns/app/sa/sleep "
                                       "inbound-vip|80|http|echo.app.svc.cluster.local default HTTP/1.1\n")


def test_default_text_start_time_is_envoys() -> None:
    assert TextFormat("[%START_TIME%]")(request(), facts()) == "[2023-11-14T22:13:20.250Z]\n"


def test_json_values_are_typed_and_missing_is_null() -> None:
    fmt = JsonFormat({"code": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "xff": "%REQ(X-FORWARDED-FOR)%",
                      "mixed": "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-NONE)%", "lit": 7})
    assert json.loads(fmt(request(), facts())) == {"code": 200, "ua": "curl/8", "xff": None,
                                                   "mixed": "GET /a?b=1 -", "lit": 7}


@pytest.mark.parametrize("bad", ["%NOPE%", "%REQ%", "%RESPONSE_CODE(x)%", "%REQ(A?B?C)%"])
def test_unsupported_operators_refused(bad: str) -> None:
    with pytest.raises(FormatError):
        TextFormat(bad)


# ---- filter expressions (the CEL subset) --------------------------------------------------------
@pytest.mark.parametrize(("expression", "status", "want"), [
    ("response.code >= 400", 503, True),
    ("response.code >= 400", 200, False),
    ("response.code == 200 && request.method == 'GET'", 200, True),
    ("response.code == 200 && request.method == \"POST\"", 200, False),
    ("!(response.code < 500) || request.url_path == '/a'", 200, True),
    ("request.path.startsWith('/a?')", 200, True),
    ("request.headers['user-agent'].contains('curl')", 200, True),
    ("request.headers['x-none'] == 'x'", 200, False),  # absent: an error in CEL, not logged
    ("request.headers['x-none'] != 'x'", 200, False),
    ("response.code_details == 'via_upstream'", 200, True),
    ("true", 500, True),
])
def test_expression_subset(expression: str, status: int, want: bool) -> None:
    assert compile_expression(expression)(request(status), facts(status)) is want


@pytest.mark.parametrize("bad", [
    "response.flags == 1", "xds.cluster_name == 'x'", "response.code >= '4'", "response.code >=", "",
    "request.method.matches('G.*')", "response.code in [400, 500]", "size(request.path) > 3",
])
def test_expressions_outside_the_subset_refused(bad: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(bad)
