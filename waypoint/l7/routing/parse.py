"""Manifest dicts -> route values, with the CRD's defaults and validation.

What the API server would reject (a path not starting with "/", a bad regex, an unknown filter
type, a negative weight, a malformed duration, ...) raises ``ManifestError(field, message)``
whose field is the path inside the object, e.g. ``spec.rules[0].matches[1].path.value``.
Defaults and limits come from ``apis/v1/httproute_types.go``, ``grpcroute_types.go`` and
``shared_types.go`` (kubernetes-sigs/gateway-api). The config loader wires
``validate_httproute`` / ``validate_grpcroute`` in with ``register_kind``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from waypoint.errors import ManifestError
from waypoint.l7.routing.model import (
    GATEWAY_GROUP,
    BackendRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    ParentRef,
    PathMatch,
    ReferenceGrant,
    ReferenceGrantFrom,
    ReferenceGrantTo,
    Retry,
    Timeouts,
)
from waypoint.l7.routing.parse_filters import parse_filters
from waypoint.l7.routing.parse_util import (
    as_int,
    as_list,
    as_map,
    as_str,
    backend_object_ref,
    compile_regex,
    header_matches,
    parse_duration,
    query_param_matches,
)

T = TypeVar("T")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_GRPC_SERVICE = re.compile(r"(?i)^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$")
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_httproute(obj: Mapping[str, Any]) -> None:
    """For ``register_kind("HTTPRoute", validate_httproute)``: raises ManifestError or returns."""
    parse_httproute(obj)


def validate_grpcroute(obj: Mapping[str, Any]) -> None:
    """For ``register_kind("GRPCRoute", validate_grpcroute)``."""
    parse_grpcroute(obj)


def validate_reference_grant(obj: Mapping[str, Any]) -> None:
    parse_reference_grant(obj)


def parse_httproute(obj: Mapping[str, Any]) -> HTTPRoute:
    namespace, name, created = _metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    rules = _items(spec, "rules", "spec", _http_rule, default=[{}])
    return HTTPRoute(
        namespace=namespace,
        name=name,
        parent_refs=_items(spec, "parentRefs", "spec", _parent_ref),
        hostnames=_hostnames(spec),
        rules=rules,
        created=created,
    )


def parse_grpcroute(obj: Mapping[str, Any]) -> GRPCRoute:
    namespace, name, created = _metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    return GRPCRoute(
        namespace=namespace,
        name=name,
        parent_refs=_items(spec, "parentRefs", "spec", _parent_ref),
        hostnames=_hostnames(spec),
        rules=_items(spec, "rules", "spec", _grpc_rule, default=[{}]),
        created=created,
    )


def parse_reference_grant(obj: Mapping[str, Any]) -> ReferenceGrant:
    namespace, name, _ = _metadata(obj)
    spec = as_map(obj.get("spec"), "spec")

    def from_(d: Mapping[str, Any], path: str) -> ReferenceGrantFrom:
        return ReferenceGrantFrom(
            group=as_str(d.get("group", ""), f"{path}.group", allow_empty=True),
            kind=as_str(d.get("kind"), f"{path}.kind"),
            namespace=as_str(d.get("namespace"), f"{path}.namespace"),
        )

    def to(d: Mapping[str, Any], path: str) -> ReferenceGrantTo:
        raw_name = d.get("name")
        return ReferenceGrantTo(
            group=as_str(d.get("group", ""), f"{path}.group", allow_empty=True),
            kind=as_str(d.get("kind"), f"{path}.kind"),
            name=None if raw_name is None else as_str(raw_name, f"{path}.name"),
        )

    froms = _items(spec, "from", "spec", from_)
    tos = _items(spec, "to", "spec", to)
    if not froms or not tos:
        raise ManifestError("spec.from" if not froms else "spec.to", "at least one entry is required")
    return ReferenceGrant(namespace=namespace, name=name, from_=froms, to=tos)


# -- pieces -----------------------------------------------------------------------------------


def _metadata(obj: Mapping[str, Any]) -> tuple[str, str, datetime | None]:
    meta = as_map(obj.get("metadata"), "metadata")
    name = as_str(meta.get("name"), "metadata.name")
    namespace = as_str(meta.get("namespace", "default"), "metadata.namespace")
    raw = meta.get("creationTimestamp")
    created = None
    if raw is not None:
        if isinstance(raw, datetime):  # yaml.safe_load turns an unquoted timestamp into a datetime
            created = raw
        else:
            try:
                created = datetime.fromisoformat(
                    as_str(raw, "metadata.creationTimestamp").replace("Z", "+00:00")
                )
            except ValueError:
                raise ManifestError("metadata.creationTimestamp", f"not an RFC 3339 time: {raw!r}") from None
    return namespace, name, created


def _items(
    parent: Mapping[str, Any],
    key: str,
    path: str,
    parse: Callable[[Mapping[str, Any], str], T],
    default: list[Any] | None = None,
) -> tuple[T, ...]:
    raw = parent.get(key)
    if raw is None:
        raw = default if default is not None else []
    field = f"{path}.{key}"
    out = []
    for i, item in enumerate(as_list(raw, field)):
        item_path = f"{field}[{i}]"
        out.append(parse(as_map(item, item_path), item_path))
    return tuple(out)


def _hostnames(spec: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for i, raw in enumerate(as_list(spec.get("hostnames") or [], "spec.hostnames")):
        host = as_str(raw, f"spec.hostnames[{i}]")
        if not _HOSTNAME.match(host):
            raise ManifestError(f"spec.hostnames[{i}]", f"not a valid hostname: {host!r}")
        out.append(host)
    return tuple(out)


def _parent_ref(d: Mapping[str, Any], path: str) -> ParentRef:
    port = d.get("port")
    section = d.get("sectionName")
    ns = d.get("namespace")
    return ParentRef(
        name=as_str(d.get("name"), f"{path}.name"),
        group=as_str(d.get("group", GATEWAY_GROUP), f"{path}.group", allow_empty=True),
        kind=as_str(d.get("kind", "Gateway"), f"{path}.kind"),
        namespace=None if ns is None else as_str(ns, f"{path}.namespace"),
        section_name=None if section is None else as_str(section, f"{path}.sectionName"),
        port=None if port is None else as_int(port, f"{path}.port", 1, 65535),
    )


def _backend_ref(d: Mapping[str, Any], path: str, grpc: bool) -> BackendRef:
    weight = as_int(d.get("weight", 1), f"{path}.weight", 0, 1_000_000)
    return BackendRef(
        ref=backend_object_ref(d, path),
        weight=weight,
        filters=parse_filters(d.get("filters"), f"{path}.filters", grpc=grpc),
    )


def _rule_name(d: Mapping[str, Any], path: str) -> str | None:
    raw = d.get("name")
    return None if raw is None else as_str(raw, f"{path}.name")


def _http_rule(d: Mapping[str, Any], path: str) -> HTTPRouteRule:
    matches = _items(d, "matches", path, _http_match, default=[{}])
    filters = parse_filters(d.get("filters"), f"{path}.filters", grpc=False)
    for i, f in enumerate(filters):
        modifier = (
            f.url_rewrite.path if f.url_rewrite else f.request_redirect.path if f.request_redirect else None
        )
        if (
            modifier
            and modifier.type == "ReplacePrefixMatch"
            and any(m.path.type != "PathPrefix" for m in matches)
        ):
            raise ManifestError(
                f"{path}.filters[{i}]", "ReplacePrefixMatch must be used with a PathPrefix path match"
            )
    return HTTPRouteRule(
        matches=matches,
        filters=filters,
        backend_refs=_items(d, "backendRefs", path, lambda b, p: _backend_ref(b, p, grpc=False)),
        name=_rule_name(d, path),
        timeouts=_timeouts(d.get("timeouts"), f"{path}.timeouts"),
        retry=_retry(d.get("retry"), f"{path}.retry"),
    )


def _grpc_rule(d: Mapping[str, Any], path: str) -> GRPCRouteRule:
    return GRPCRouteRule(
        matches=_items(d, "matches", path, _grpc_match, default=[{}]),
        filters=parse_filters(d.get("filters"), f"{path}.filters", grpc=True),
        backend_refs=_items(d, "backendRefs", path, lambda b, p: _backend_ref(b, p, grpc=True)),
        name=_rule_name(d, path),
    )


def _http_match(d: Mapping[str, Any], path: str) -> HTTPRouteMatch:
    raw_method = d.get("method")
    method = None
    if raw_method is not None:
        method = as_str(raw_method, f"{path}.method")
        if method not in _METHODS:
            raise ManifestError(f"{path}.method", f"unsupported method {method!r}")
    return HTTPRouteMatch(
        path=_path_match(d.get("path"), f"{path}.path"),
        headers=header_matches(d.get("headers"), f"{path}.headers"),
        query_params=query_param_matches(d.get("queryParams"), f"{path}.queryParams"),
        method=method,
    )


def _path_match(raw: Any, path: str) -> PathMatch:
    d = as_map(raw if raw is not None else {}, path)
    kind = as_str(d.get("type", "PathPrefix"), f"{path}.type")
    value = as_str(d.get("value", "/"), f"{path}.value")
    if kind == "RegularExpression":
        return PathMatch(kind, value, compile_regex(value, f"{path}.value"))
    if kind not in ("Exact", "PathPrefix"):
        raise ManifestError(f"{path}.type", f"unknown path match type {kind!r}")
    if not value.startswith("/"):
        raise ManifestError(f"{path}.value", "must be an absolute path (start with '/')")
    if "//" in value or "/./" in value or "/../" in value or value.endswith(("/..", "/.")) or "?" in value:
        raise ManifestError(
            f"{path}.value", "must not contain '//', '/./', '/../', '?' or end in '/.' or '/..'"
        )
    return PathMatch(kind, value)


def _grpc_match(d: Mapping[str, Any], path: str) -> GRPCRouteMatch:
    raw = d.get("method")
    method = None
    if raw is not None:
        method = _grpc_method(as_map(raw, f"{path}.method"), f"{path}.method")
    return GRPCRouteMatch(method=method, headers=header_matches(d.get("headers"), f"{path}.headers"))


def _grpc_method(d: Mapping[str, Any], path: str) -> GRPCMethodMatch:
    kind = as_str(d.get("type", "Exact"), f"{path}.type")
    service = None if d.get("service") is None else as_str(d.get("service"), f"{path}.service")
    method = None if d.get("method") is None else as_str(d.get("method"), f"{path}.method")
    if service is None and method is None:
        raise ManifestError(path, "one or both of 'service' or 'method' must be specified")
    if kind == "Exact":
        if service is not None and not _GRPC_SERVICE.match(service):
            raise ManifestError(f"{path}.service", f"not a valid gRPC service name: {service!r}")
        if method is not None and not _GRPC_METHOD.match(method):
            raise ManifestError(f"{path}.method", f"not a valid gRPC method name: {method!r}")
        return GRPCMethodMatch(kind, service, method)
    if kind != "RegularExpression":
        raise ManifestError(f"{path}.type", f"unknown gRPC method match type {kind!r}")
    if service is not None:
        compile_regex(service, f"{path}.service")
    if method is not None:
        compile_regex(method, f"{path}.method")
    # Istio turns the pair into one ":path" regex (conversion.go createGRPCURIMatch).
    whole = f"/(?:{service if service is not None else '[^/]+'})/(?:{method if method is not None else '.+'})"
    return GRPCMethodMatch(kind, service, method, re.compile(whole))


def _timeouts(raw: Any, path: str) -> Timeouts | None:
    if raw is None:
        return None
    d = as_map(raw, path)
    request = parse_duration(d["request"], f"{path}.request") if "request" in d else None
    backend = parse_duration(d["backendRequest"], f"{path}.backendRequest") if "backendRequest" in d else None
    if request and backend and backend > request:
        # CRD rule: "backendRequest timeout cannot be longer than request timeout"
        raise ManifestError(f"{path}.backendRequest", "must not be longer than the request timeout")
    return Timeouts(request_s=request or None, backend_request_s=backend or None)


def _retry(raw: Any, path: str) -> Retry | None:
    if raw is None:
        return None
    d = as_map(raw, path)
    attempts = None if d.get("attempts") is None else as_int(d["attempts"], f"{path}.attempts", 0, 1_000_000)
    codes = tuple(
        as_int(c, f"{path}.codes[{i}]", 400, 599)
        for i, c in enumerate(as_list(d.get("codes") or [], f"{path}.codes"))
    )
    backoff = parse_duration(d["backoff"], f"{path}.backoff") if d.get("backoff") is not None else None
    return Retry(attempts=attempts, codes=codes, backoff_s=backoff)
