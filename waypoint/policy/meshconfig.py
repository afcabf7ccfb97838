"""Istio's MeshConfig from the folder: the ``istio`` ConfigMap's ``data.mesh``, its ``extensionProviders``.

Where Istio reads it: the ``istio`` ConfigMap in istiod's (root) namespace, key ``mesh``, a YAML
MeshConfig (``istio/api`` ``mesh/v1alpha1/config.proto``). Of it, the data plane uses the ext-authz
providers a ``CUSTOM`` AuthorizationPolicy names (``provider: {name: X}``):

- ``envoyExtAuthzHttp``: service, port, timeout, pathPrefix, failOpen, statusOnError,
  includeRequestHeadersInCheck (and the deprecated includeHeadersInCheck),
  includeAdditionalHeadersInCheck, headersToUpstreamOnAllow, headersToDownstreamOnAllow,
  headersToDownstreamOnDeny, includeRequestBodyInCheck.
- ``envoyExtAuthzGrpc``: service, port, timeout, failOpen, statusOnError, includeRequestBodyInCheck.

Validation and defaults follow istiod (``IS:pilot/pkg/security/authz/builder/extauthz.go``
``buildExtAuthzHTTP``/``buildExtAuthzGRPC``/``parseStatusOnError``/``timeoutOrDefault`` and
``generateHeaders``): port in 1..65535, statusOnError one of Envoy's ``type.v3.StatusCode`` values
(unset: Envoy's default 403), pathPrefix starting with ``/``, a lone ``"*"`` header pattern refused,
``*x``/``x*`` as suffix/prefix matches (case-insensitive), timeout default 600 s. Other provider kinds
(tracing, access logs, ...) are accepted and ignored, as istiod's ext-authz builder skips them.

Access logs (``IS:pilot/pkg/model/telemetry_logging.go``): ``accessLogFile`` (unset or ``""``: off;
``/dev/stdout``), ``accessLogEncoding`` (``TEXT``/``JSON``), ``accessLogFormat`` (a TEXT format, or for
JSON an object of ``key: format``), ``defaultProviders.accessLogging``, and ``envoyFileAccessLog``
providers (``path``, ``logFormat.text``/``logFormat.labels``) that a Telemetry object names. The
built-in provider ``envoy`` (``/dev/stdout``, formatted by the three mesh fields) exists unless the
config defines its own. A TEXT format with an operator we cannot fill is rejected at load, naming the
field (:mod:`waypoint.telemetry.access_log_format`).

Sans-I/O: values in, values out. Resolving ``service`` to an address is the caller's (it needs MeshState).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.mesh.model import MeshSnapshot
from waypoint.telemetry.access_log_format import FormatError, JsonFormat, TextFormat, json_fields

log = logging.getLogger(__name__)

MESH_CONFIGMAP = "istio"  # IS: pkg/config/mesh/kubemesh (``istio`` ConfigMap, key ``mesh``)
MESH_KEY = "mesh"
DEV_STDOUT = "/dev/stdout"
BUILTIN_ENVOY = "envoy"  # the built-in access-log provider (telemetry_logging.go builtinEnvoyAccessLogProvider)
ENCODINGS = ("TEXT", "JSON")
DEFAULT_TIMEOUT_S = 600.0  # extauthz.go timeoutOrDefault
DEFAULT_STATUS_ON_ERROR = 403  # Envoy ext_authz.proto ``status_on_error``: "Forbidden" when unset

# Envoy ``envoy/type/v3/http_status.proto`` StatusCode values (what parseStatusOnError accepts).
ENVOY_STATUS_CODES = frozenset({
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
    422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})

_HTTP_KEYS = frozenset({
    "service", "port", "timeout", "pathPrefix", "failOpen", "statusOnError", "includeHeadersInCheck",
    "includeRequestHeadersInCheck", "includeAdditionalHeadersInCheck", "includeRequestBodyInCheck",
    "headersToUpstreamOnAllow", "headersToDownstreamOnAllow", "headersToDownstreamOnDeny",
})
_GRPC_KEYS = frozenset({"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"})
_BODY_KEYS = frozenset({"maxRequestBytes", "allowPartialMessage", "packAsBytes"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class HeaderPatterns:
    """Envoy ``ListStringMatcher`` as istiod generates it (``generateHeaders``): exact, ``x*``
    prefix or ``*x`` suffix, all case-insensitive. Names are compared lower-cased."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> HeaderPatterns:
        exact, prefixes, suffixes = set(), [], []
        for p in (p.lower() for p in patterns):
            if p.startswith("*"):
                suffixes.append(p[1:])
            elif p.endswith("*"):
                prefixes.append(p[:-1])
            else:
                exact.add(p)
        return cls(frozenset(exact), tuple(prefixes), tuple(suffixes))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes or self.suffixes)

    def matches(self, name: str) -> bool:
        return name in self.exact or name.startswith(self.prefixes) or name.endswith(self.suffixes)


@dataclass(frozen=True, slots=True)
class BodySettings:
    """``includeRequestBodyInCheck`` (Envoy ``BufferSettings``)."""

    max_request_bytes: int = 0
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


@dataclass(frozen=True, slots=True)
class ExtAuthzProvider:
    """One ``envoyExtAuthzHttp`` (``kind == "http"``) or ``envoyExtAuthzGrpc`` (``"grpc"``) provider.

    ``service`` as written: a hostname (``opa.opa-system.svc.cluster.local``), ``ns/hostname``, or an IP."""

    name: str
    kind: str
    service: str
    port: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    fail_open: bool = False
    status_on_error: int = DEFAULT_STATUS_ON_ERROR
    body: BodySettings | None = None
    # HTTP only
    path_prefix: str = ""
    request_headers: HeaderPatterns = field(default_factory=HeaderPatterns)
    additional_headers: tuple[tuple[str, str], ...] = ()
    upstream_on_allow: HeaderPatterns = field(default_factory=HeaderPatterns)
    downstream_on_allow: HeaderPatterns = field(default_factory=HeaderPatterns)
    downstream_on_deny: HeaderPatterns = field(default_factory=HeaderPatterns)

    @property
    def hostname(self) -> str:
        """``service`` without a ``namespace/`` prefix (IS:pilot/pkg/extensionproviders LookupCluster)."""
        return self.service.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class FileAccessLogProvider:
    """An ``envoyFileAccessLog`` extension provider. ``text``/``labels``: its ``logFormat`` (None: the
    mesh's format for the built-in ``envoy``, Istio's TEXT default for any other)."""

    name: str
    path: str = DEV_STDOUT
    text: str | None = None
    labels: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    extension_providers: Mapping[str, ExtAuthzProvider] = field(default_factory=lambda: MappingProxyType({}))
    access_log_file: str | None = None  # None: not set (Istio's default, off); "": set to off
    access_log_encoding: str = "TEXT"
    access_log_format: str = ""
    default_access_log_providers: tuple[str, ...] = ()  # defaultProviders.accessLogging
    access_log_providers: Mapping[str, FileAccessLogProvider] = field(default_factory=lambda: MappingProxyType({}))

    def access_log_provider(self, name: str) -> FileAccessLogProvider | None:
        """The provider a Telemetry object names (case-insensitive, as istiod's ``fetchProvider``),
        the built-in ``envoy`` included."""
        for key, provider in self.access_log_providers.items():
            if key.lower() == name.lower():
                return provider
        return BUILTIN_ENVOY_PROVIDER if name.lower() == BUILTIN_ENVOY else None


EMPTY_MESH_CONFIG = MeshConfig()
BUILTIN_ENVOY_PROVIDER = FileAccessLogProvider(BUILTIN_ENVOY)


def parse_mesh_config(text: Any, path: str = "data.mesh") -> MeshConfig:
    """``data.mesh`` (YAML text, or an already loaded mapping) -> :class:`MeshConfig`."""
    if isinstance(text, str):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ManifestError(path, f"not valid YAML: {e}") from None
    else:
        loaded = text
    doc = f.mapping(loaded, path)
    providers: dict[str, ExtAuthzProvider] = {}
    loggers: dict[str, FileAccessLogProvider] = {}
    for i, entry in enumerate(f.sequence(doc.get("extensionProviders"), f"{path}.extensionProviders")):
        at = f"{path}.extensionProviders[{i}]"
        spec = f.mapping(entry, at, required=True)
        provider: ExtAuthzProvider | FileAccessLogProvider | None = _provider(spec, at)
        if provider is None and "envoyFileAccessLog" in spec:
            provider = _file_access_log(spec, f"{at}.envoyFileAccessLog")
        if provider is None:
            continue
        if provider.name in providers or provider.name in loggers:
            raise ManifestError(f"{at}.name", f"extension provider name must be unique, found: {provider.name}")
        if isinstance(provider, FileAccessLogProvider):
            loggers[provider.name] = provider
        else:
            providers[provider.name] = provider
    return MeshConfig(MappingProxyType(providers), **_access_log_fields(doc, path),
                      access_log_providers=MappingProxyType(loggers))


def _access_log_fields(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``accessLogFile``/``accessLogEncoding``/``accessLogFormat`` and ``defaultProviders.accessLogging``."""
    log_file = doc.get("accessLogFile")
    if log_file is not None:
        log_file = f.string(log_file, f"{path}.accessLogFile")
    encoding = doc.get("accessLogEncoding", "TEXT")
    if encoding not in ENCODINGS:
        raise ManifestError(f"{path}.accessLogEncoding", f"must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    fmt = f.string(doc.get("accessLogFormat"), f"{path}.accessLogFormat")
    _check_format(fmt, encoding == "JSON", f"{path}.accessLogFormat")
    defaults = f.mapping(doc.get("defaultProviders"), f"{path}.defaultProviders")
    names = tuple(f.string(n, f"{path}.defaultProviders.accessLogging[{i}]", required=True)
                  for i, n in enumerate(f.sequence(defaults.get("accessLogging"),
                                                   f"{path}.defaultProviders.accessLogging")))
    return {"access_log_file": log_file, "access_log_encoding": encoding, "access_log_format": fmt,
            "default_access_log_providers": names}


def _check_format(fmt: str, as_json: bool, at: str) -> None:
    """Compile a format once at load, so an operator we cannot fill is reported with its field. A JSON
    format that is not an object is left for the resolver (Istio logs it and uses its default keys)."""
    if not fmt:
        return
    try:
        if not as_json:
            TextFormat(fmt)
        elif (fields := json_fields(fmt)) is not None:
            JsonFormat(fields)
    except FormatError as e:
        raise ManifestError(at, str(e)) from None


def _file_access_log(entry: Mapping[str, Any], at: str) -> FileAccessLogProvider:
    name = f.string(entry.get("name"), f"{at[:at.rfind('.')]}.name", required=True)
    spec = f.mapping(entry["envoyFileAccessLog"], at, required=True)
    for key in spec:
        if key not in ("path", "logFormat", "omitEmptyValues"):
            raise ManifestError(f"{at}.{key}", "unknown field")
    if spec.get("omitEmptyValues"):
        raise ManifestError(f"{at}.omitEmptyValues", "not supported: empty values are written as Envoy's \"-\"")
    path = f.string(spec.get("path"), f"{at}.path") or DEV_STDOUT  # fileAccessLogFromTelemetry: "" is stdout
    log_format = f.mapping(spec.get("logFormat"), f"{at}.logFormat")
    text = log_format.get("text")
    labels = log_format.get("labels")
    if text is not None and labels is not None:
        raise ManifestError(f"{at}.logFormat", "only one of text or labels")
    if text is not None:
        _check_format(f.string(text, f"{at}.logFormat.text"), False, f"{at}.logFormat.text")
    if labels is not None:
        labels = dict(f.mapping(labels, f"{at}.logFormat.labels"))
        try:
            JsonFormat(labels)
        except FormatError as e:
            raise ManifestError(f"{at}.logFormat.labels", str(e)) from None
    return FileAccessLogProvider(name, path, text, MappingProxyType(labels) if labels is not None else None)


def validate_mesh_configmap(doc: Mapping[str, Any]) -> None:
    """Registry validator for kind ConfigMap: only the mesh config (``istio``, ``data.mesh``) is checked."""
    md = f.mapping(doc.get("metadata"), "metadata")
    if md.get("name") != MESH_CONFIGMAP:
        return
    data = f.mapping(doc.get("data"), "data")
    if MESH_KEY in data:
        parse_mesh_config(f.string(data.get(MESH_KEY), f"data.{MESH_KEY}"))


def mesh_config_from_snapshot(snapshot: MeshSnapshot, root_namespace: str) -> MeshConfig:
    """The root namespace's ``istio`` ConfigMap, or the empty config (none, or an invalid one that a
    registry without the validator let through: logged, as istiod would keep its last good one)."""
    for obj in snapshot.objects("ConfigMap"):
        if obj.name != MESH_CONFIGMAP or obj.namespace != root_namespace:
            continue
        data = obj.body.get("data")
        if not isinstance(data, Mapping) or MESH_KEY not in data:
            return EMPTY_MESH_CONFIG
        try:
            return parse_mesh_config(data[MESH_KEY])
        except ManifestError as e:
            log.error("ConfigMap %s/%s ignored: %s: %s", obj.namespace, obj.name, e.field, e.message)
            return EMPTY_MESH_CONFIG
    return EMPTY_MESH_CONFIG


def _provider(entry: Mapping[str, Any], at: str) -> ExtAuthzProvider | None:
    name = f.string(entry.get("name"), f"{at}.name", required=True)
    if "envoyExtAuthzHttp" in entry:
        return _http(name, f.mapping(entry["envoyExtAuthzHttp"], f"{at}.envoyExtAuthzHttp", required=True),
                     f"{at}.envoyExtAuthzHttp")
    if "envoyExtAuthzGrpc" in entry:
        return _grpc(name, f.mapping(entry["envoyExtAuthzGrpc"], f"{at}.envoyExtAuthzGrpc", required=True),
                     f"{at}.envoyExtAuthzGrpc")
    return None  # another kind of provider (tracing, logging): not ours (extauthz.go: ``continue``)


def _common(spec: Mapping[str, Any], at: str, allowed: frozenset[str]) -> dict[str, Any]:
    for key in spec:
        if key not in allowed:
            raise ManifestError(f"{at}.{key}", "unknown field")
    service = f.string(spec.get("service"), f"{at}.service", required=True)
    port = spec.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ManifestError(f"{at}.port", f"port must be in the range [1, 65535], found: {port}")
    return {
        "service": service,
        "port": port,
        "timeout_s": _duration(spec.get("timeout"), f"{at}.timeout"),
        "fail_open": _bool(spec.get("failOpen"), f"{at}.failOpen"),
        "status_on_error": _status(spec.get("statusOnError"), f"{at}.statusOnError"),
        "body": _body(spec.get("includeRequestBodyInCheck"), f"{at}.includeRequestBodyInCheck"),
    }


def _http(name: str, spec: Mapping[str, Any], at: str) -> ExtAuthzProvider:
    common = _common(spec, at, _HTTP_KEYS)
    prefix = f.string(spec.get("pathPrefix"), f"{at}.pathPrefix")
    if prefix and not prefix.startswith("/"):
        raise ManifestError(f"{at}.pathPrefix", f"pathPrefix must begin with `/`, found: {prefix!r}")
    request = _patterns(spec, "includeRequestHeadersInCheck", at)
    if not request:  # the deprecated name is read only when the new one is unset (generateHTTPConfig)
        request = _patterns(spec, "includeHeadersInCheck", at)
    additional = f.string_map(spec.get("includeAdditionalHeadersInCheck"), f"{at}.includeAdditionalHeadersInCheck")
    return ExtAuthzProvider(
        name, "http", **common, path_prefix=prefix,
        request_headers=HeaderPatterns.of(request),
        additional_headers=tuple((k.lower(), additional[k]) for k in sorted(additional)),
        upstream_on_allow=HeaderPatterns.of(_patterns(spec, "headersToUpstreamOnAllow", at)),
        downstream_on_allow=HeaderPatterns.of(_patterns(spec, "headersToDownstreamOnAllow", at)),
        downstream_on_deny=HeaderPatterns.of(_patterns(spec, "headersToDownstreamOnDeny", at)),
    )


def _grpc(name: str, spec: Mapping[str, Any], at: str) -> ExtAuthzProvider:
    return ExtAuthzProvider(name, "grpc", **_common(spec, at, _GRPC_KEYS))


def _patterns(spec: Mapping[str, Any], key: str, at: str) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(f.sequence(spec.get(key), f"{at}.{key}")):
        text = f.string(value, f"{at}.{key}[{i}]", required=True)
        if text == "*":
            raise ManifestError(f"{at}.{key}[{i}]", 'a single wildcard ("*") is not supported, '
                                "change it to either prefix or suffix match")
        out.append(text)
    return tuple(out)


def _bool(value: Any, at: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ManifestError(at, f"must be true or false, not {value!r}")
    return value


def _duration(value: Any, at: str) -> float:
    """A protobuf Duration as YAML writes it (``"0.5s"``, ``"10s"``; Go units accepted too)."""
    if value is None:
        return DEFAULT_TIMEOUT_S
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ManifestError(at, f"must be a duration such as \"0.5s\", not {value!r}")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise ManifestError(at, "must be positive")
    return seconds


def _status(value: Any, at: str) -> int:
    if value is None or value == "":
        return DEFAULT_STATUS_ON_ERROR
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit():
        raise ManifestError(at, f"invalid statusOnError {value!r}: not a number")
    if int(text) not in ENVOY_STATUS_CODES:
        raise ManifestError(at, f"unsupported statusOnError {text}, supported values: {sorted(ENVOY_STATUS_CODES)}")
    return int(text)


def _body(value: Any, at: str) -> BodySettings | None:
    if value is None:
        return None
    spec = f.mapping(value, at)
    for key in spec:
        if key not in _BODY_KEYS:
            raise ManifestError(f"{at}.{key}", "unknown field")
    max_bytes = f.integer(spec.get("maxRequestBytes"), f"{at}.maxRequestBytes")
    if max_bytes < 0:
        raise ManifestError(f"{at}.maxRequestBytes", "must not be negative")
    return BodySettings(max_bytes, _bool(spec.get("allowPartialMessage"), f"{at}.allowPartialMessage"),
                        _bool(spec.get("packAsBytes"), f"{at}.packAsBytes"))
