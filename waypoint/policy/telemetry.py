"""The Telemetry API's ``accessLogging`` for a waypoint, merged with the mesh config as istiod does.

Which access logs a waypoint writes (``IS:pilot/pkg/model/telemetry.go``: ``applicableTelemetries``,
``AccessLogging``, ``mergeLogs``; formats from ``telemetry_logging.go``):

1. The Telemetry objects in scope, lowest precedence first: the root namespace's mesh-wide one (no
   ``selector``, no ``targetRefs``), the waypoint namespace's namespace-wide one, then one in the
   waypoint's namespace whose ``targetRefs`` name the waypoint's Gateway. In each scope the oldest
   object wins (``creationTimestamp``, then name), as istiod sorts them.
2. None of them has ``accessLogging`` and the mesh has no ``defaultProviders.accessLogging``: the
   legacy mesh fields decide (``accessLogFile``; unset or ``""`` is off).
3. Otherwise ``mergeLogs``: a lower scope's ``providers`` replace the inherited ones; an entry
   without providers applies to the inherited ones; ``disabled: true`` removes a provider; the last
   ``filter`` set for a provider is its filter; an entry whose ``match.mode`` is ``CLIENT`` does not
   apply (the waypoint's HTTP listener is of class ``SidecarInbound``: mode ``SERVER``,
   ``listener_waypoint.go`` ``buildHCMConnectTerminateChain``).
4. Each provider name is looked up in the mesh config (``envoyFileAccessLog`` providers and the
   built-in ``envoy``); a name that is not there, or of a kind we do not write (OpenTelemetry, gRPC
   ALS), is skipped with an error in the log, as istiod skips what it cannot fetch.

Honest limits, rejected at load with the field named: ``targetRefs`` of kinds other than Gateway
(Istio also accepts GatewayClass, Service and ServiceEntry targets), ``filter.expression`` outside
the CEL subset of :mod:`waypoint.telemetry.log_expression`. A ``selector`` Telemetry selects pods,
not this waypoint; ``metrics`` and ``tracing`` are accepted and not acted on here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.mesh.model import KubeObject, MeshSnapshot
from waypoint.policy.meshconfig import BUILTIN_ENVOY, FileAccessLogProvider, MeshConfig
from waypoint.telemetry.access_log_format import (
    ISTIO_JSON_FORMAT,
    ISTIO_TEXT_FORMAT,
    JsonFormat,
    LineFormat,
    TextFormat,
    json_fields,
)
from waypoint.telemetry.log_expression import ExpressionError, Predicate, compile_expression

log = logging.getLogger(__name__)

_API_VERSIONS = ("telemetry.istio.io/v1", "telemetry.istio.io/v1beta1", "telemetry.istio.io/v1alpha1")
_SPEC_KEYS = frozenset({"selector", "targetRef", "targetRefs", "accessLogging", "metrics", "tracing"})
_LOGGING_KEYS = frozenset({"match", "providers", "disabled", "filter"})
_MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")
GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One ``accessLogging`` item as validated."""

    providers: tuple[str, ...]
    disabled: bool
    mode: str
    expression: str | None


@dataclass(frozen=True, slots=True)
class AccessLogSpec:
    """One access log the waypoint writes: where, in what format, and which requests."""

    path: str
    format: LineFormat
    expression: str | None = None
    predicate: Predicate | None = None


def validate_telemetry(doc: Mapping[str, Any]) -> None:
    """Registry validator for kind ``Telemetry``: the field of the first problem is named."""
    parse_access_logging(doc)
    _target_refs(f.mapping(doc.get("spec"), "spec"))


def parse_access_logging(doc: Mapping[str, Any]) -> tuple[AccessLogEntry, ...]:
    """``spec.accessLogging`` of a Telemetry object, validated."""
    api_version = f.string(doc.get("apiVersion"), "apiVersion", required=True)
    if api_version not in _API_VERSIONS:
        raise ManifestError("apiVersion", f"must be one of {', '.join(_API_VERSIONS)}, not {api_version!r}")
    spec = f.mapping(doc.get("spec"), "spec")
    for key in spec:
        if key not in _SPEC_KEYS:
            raise ManifestError(f"spec.{key}", "unknown field")
    if spec.get("selector") is not None and (spec.get("targetRefs") or spec.get("targetRef")):
        raise ManifestError("spec", "only one of targetRefs or selector can be set")
    return tuple(_entry(f.mapping(item, f"spec.accessLogging[{i}]", required=True), f"spec.accessLogging[{i}]")
                 for i, item in enumerate(f.sequence(spec.get("accessLogging"), "spec.accessLogging")))


def _entry(item: Mapping[str, Any], at: str) -> AccessLogEntry:
    for key in item:
        if key not in _LOGGING_KEYS:
            raise ManifestError(f"{at}.{key}", "unknown field")
    providers = tuple(
        f.string(f.mapping(p, f"{at}.providers[{j}]", required=True).get("name"), f"{at}.providers[{j}].name",
                 required=True)
        for j, p in enumerate(f.sequence(item.get("providers"), f"{at}.providers"))
    )
    disabled = item.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ManifestError(f"{at}.disabled", f"must be true or false, not {disabled!r}")
    mode = f.string(f.mapping(item.get("match"), f"{at}.match").get("mode"), f"{at}.match.mode") or _MODES[0]
    if mode not in _MODES:
        raise ManifestError(f"{at}.match.mode", f"must be one of {', '.join(_MODES)}, not {mode!r}")
    expression = None
    if item.get("filter") is not None:
        expression = f.string(f.mapping(item["filter"], f"{at}.filter").get("expression"),
                              f"{at}.filter.expression", required=True)
        try:
            compile_expression(expression)
        except ExpressionError as e:
            raise ManifestError(f"{at}.filter.expression", f"not supported by this waypoint: {e}") from None
    return AccessLogEntry(providers, disabled, mode, expression)


def _target_refs(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The Gateway names a Telemetry targets (``targetRefs``, or the deprecated single ``targetRef``)."""
    refs = list(f.sequence(spec.get("targetRefs"), "spec.targetRefs"))
    field_name = "spec.targetRefs"
    if not refs and spec.get("targetRef") is not None:
        refs, field_name = [spec["targetRef"]], "spec.targetRef"
    names = []
    for i, ref in enumerate(refs):
        at = f"{field_name}[{i}]" if field_name == "spec.targetRefs" else field_name
        ref = f.mapping(ref, at, required=True)
        kind = f.string(ref.get("kind"), f"{at}.kind", required=True)
        group = f.string(ref.get("group"), f"{at}.group")
        if kind != "Gateway" or group != GATEWAY_GROUP:
            raise ManifestError(f"{at}.kind", f"{group or 'core'}/{kind} targets are not supported by this waypoint: "
                                f"only kind Gateway of group {GATEWAY_GROUP}")
        if ref.get("namespace"):
            raise ManifestError(f"{at}.namespace", "must be empty: a Telemetry targets its own namespace")
        names.append(f.string(ref.get("name"), f"{at}.name", required=True))
    return tuple(names)


def _oldest(objs: Iterable[KubeObject]) -> KubeObject | None:
    ordered = sorted(objs, key=lambda o: (o.creation_timestamp or "", o.name))
    return ordered[0] if ordered else None


def applicable_telemetries(snapshot: MeshSnapshot, namespace: str, gateway: str,
                           root_namespace: str) -> list[KubeObject]:
    """The Telemetry objects that configure this waypoint, lowest precedence first."""
    objs = snapshot.objects("Telemetry")

    def scope_wide(ns: str) -> KubeObject | None:
        return _oldest(o for o in objs if o.namespace == ns and _is_namespace_wide(o))

    found = [scope_wide(root_namespace)]
    if namespace != root_namespace:
        found.append(scope_wide(namespace))
    found.append(_oldest(o for o in objs if o.namespace == namespace and gateway in _safe_targets(o)))
    return [o for o in found if o is not None]


def _is_namespace_wide(obj: KubeObject) -> bool:
    spec = obj.body.get("spec") or {}
    return not spec.get("selector") and not spec.get("targetRefs") and not spec.get("targetRef")


def _safe_targets(obj: KubeObject) -> tuple[str, ...]:
    try:
        return _target_refs(f.mapping(obj.body.get("spec"), "spec"))
    except ManifestError:
        return ()  # a registry without the validator let it through: it targets nothing we serve


def merge_logs(levels: list[tuple[AccessLogEntry, ...]], defaults: tuple[str, ...]) -> dict[str, str | None]:
    """istiod's ``mergeLogs`` for mode SERVER: provider name -> its filter expression (or None)."""
    if not levels:
        return dict.fromkeys(defaults)
    in_scope = list(defaults)
    filters: dict[str, str | None] = {}
    for entries in levels:
        names = [p for e in entries for p in e.providers]
        for e in entries:
            for p in e.providers:
                filters[p] = e.expression
        if names:
            in_scope = names
    providers: dict[str, str | None] = {}
    parent = list(defaults)
    for entries in levels:
        for e in entries:
            names = list(e.providers) or parent
            parent = names
            for p in names:
                if p not in in_scope or e.mode == "CLIENT":
                    continue
                if e.disabled:
                    providers.pop(p, None)
                    continue
                providers[p] = filters.get(p)
    return providers


def access_logs_for(snapshot: MeshSnapshot, mesh: MeshConfig, namespace: str, gateway: str,
                    root_namespace: str, default_file: str | None = None) -> tuple[AccessLogSpec, ...]:
    """The access logs the waypoint ``namespace/gateway`` writes for this snapshot and mesh config.

    ``default_file``: where to log when neither the Telemetry API nor ``accessLogFile`` says anything
    (None: nowhere, Istio's default; ``waypoint dev`` passes ``/dev/stdout``)."""
    levels = []
    for obj in applicable_telemetries(snapshot, namespace, gateway, root_namespace):
        try:
            entries = parse_access_logging(obj.body)
        except ManifestError as e:
            log.error("Telemetry %s/%s ignored: %s: %s", obj.namespace, obj.name, e.field, e.message)
            continue
        if entries:
            levels.append(entries)
    if not levels and not mesh.default_access_log_providers:
        path = mesh.access_log_file if mesh.access_log_file is not None else default_file
        return (AccessLogSpec(path, mesh_format(mesh)),) if path else ()
    specs = []
    for name, expression in merge_logs(levels, mesh.default_access_log_providers).items():
        provider = mesh.access_log_provider(name)
        if provider is None:
            log.error("access log provider %r is not an envoyFileAccessLog provider of the mesh config: skipped", name)
            continue
        predicate = compile_expression(expression) if expression else None
        specs.append(AccessLogSpec(provider.path, _provider_format(provider, mesh), expression, predicate))
    return tuple(specs)


def mesh_format(mesh: MeshConfig) -> LineFormat:
    """``FileAccessLogFromMeshConfig``: TEXT with the custom or Istio's format; JSON with the custom
    object, or Istio's keys when it is unset or not a JSON object (logged)."""
    if mesh.access_log_encoding == "JSON":
        fields = json_fields(mesh.access_log_format) if mesh.access_log_format else None
        if mesh.access_log_format and fields is None:
            log.error("accessLogFormat is not a JSON object: Istio's default JSON format is used")
        return JsonFormat(fields or ISTIO_JSON_FORMAT)
    return TextFormat(mesh.access_log_format or ISTIO_TEXT_FORMAT)


def _provider_format(provider: FileAccessLogProvider, mesh: MeshConfig) -> LineFormat:
    """``telemetryAccessLog``: the built-in ``envoy`` without a logFormat follows the mesh fields."""
    if provider.labels is not None:
        return JsonFormat(provider.labels or ISTIO_JSON_FORMAT)
    if provider.text:
        return TextFormat(provider.text)
    if provider.name == BUILTIN_ENVOY:
        return mesh_format(mesh)
    return TextFormat(ISTIO_TEXT_FORMAT)
