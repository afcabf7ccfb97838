"""HTTPRouteFilter / GRPCRouteFilter parsing (``httproute_types.go`` HTTPRouteFilter and friends).

Rules the CRD enforces and we repeat: the field named by ``type`` must be set; at most one
filter of each type except RequestMirror (and ExtensionRef); RequestRedirect and URLRewrite are
mutually exclusive; GRPCRoute allows only header modifiers, mirrors and ExtensionRef.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waypoint.errors import ManifestError
from waypoint.l7.routing.model import (
    Filter,
    HeaderModifier,
    PathModifier,
    RequestMirror,
    RequestRedirect,
    URLRewrite,
)
from waypoint.l7.routing.parse_util import as_int, as_list, as_map, as_str, backend_object_ref, header_name

HTTP_FILTERS = frozenset(
    {
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "RequestMirror",
        "ExtensionRef",
        "CORS",
    }
)
GRPC_FILTERS = frozenset({"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"})
_REPEATABLE = frozenset({"RequestMirror", "ExtensionRef"})
_FIELD = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})  # Istio accepts all five (conversion.go)


def parse_filters(raw: Any, field: str, *, grpc: bool) -> tuple[Filter, ...]:
    allowed = GRPC_FILTERS if grpc else HTTP_FILTERS
    out: list[Filter] = []
    seen: set[str] = set()
    for i, item in enumerate(as_list(raw or [], field)):
        p = f"{field}[{i}]"
        d = as_map(item, p)
        kind = as_str(d.get("type"), f"{p}.type")
        if kind not in allowed:
            raise ManifestError(f"{p}.type", f"unknown or unsupported filter type {kind!r}")
        if kind in seen and kind not in _REPEATABLE:
            raise ManifestError(f"{p}.type", f"at most one {kind} filter is allowed")
        seen.add(kind)
        body = d.get(_FIELD[kind])
        if body is None:
            raise ManifestError(f"{p}.{_FIELD[kind]}", f"must be set for filter type {kind}")
        out.append(_filter(kind, as_map(body, f"{p}.{_FIELD[kind]}"), f"{p}.{_FIELD[kind]}"))
    if {"RequestRedirect", "URLRewrite"} <= seen:
        raise ManifestError(field, "RequestRedirect and URLRewrite cannot be used together")
    return tuple(out)


def _filter(kind: str, d: Mapping[str, Any], path: str) -> Filter:
    if kind == "RequestHeaderModifier":
        return Filter(kind, request_header_modifier=header_modifier(d, path))
    if kind == "ResponseHeaderModifier":
        return Filter(kind, response_header_modifier=header_modifier(d, path))
    if kind == "RequestRedirect":
        return Filter(kind, request_redirect=_redirect(d, path))
    if kind == "URLRewrite":
        host = d.get("hostname")
        return Filter(
            kind,
            url_rewrite=URLRewrite(
                hostname=None if host is None else as_str(host, f"{path}.hostname"),
                path=_path_modifier(d.get("path"), f"{path}.path"),
            ),
        )
    if kind == "RequestMirror":
        return Filter(kind, request_mirror=_mirror(d, path))
    if kind == "ExtensionRef":
        ref = "/".join(
            as_str(d.get(k, ""), f"{path}.{k}", allow_empty=True) for k in ("group", "kind", "name")
        )
        return Filter(kind, extension_ref=ref)
    return Filter(kind)  # CORS: accepted, not applied (outside this data plane's scope for now)


def header_modifier(d: Mapping[str, Any], path: str) -> HeaderModifier:
    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out: dict[str, str] = {}
        for i, item in enumerate(as_list(d.get(key) or [], f"{path}.{key}")):
            p = f"{path}.{key}[{i}]"
            e = as_map(item, p)
            name = header_name(e.get("name"), f"{p}.name")
            out.setdefault(name, as_str(e.get("value"), f"{p}.value", allow_empty=True))
        return tuple(out.items())

    removes = [
        header_name(r, f"{path}.remove[{i}]")
        for i, r in enumerate(as_list(d.get("remove") or [], f"{path}.remove"))
    ]
    return HeaderModifier(set=pairs("set"), add=pairs("add"), remove=tuple(dict.fromkeys(removes)))


def _path_modifier(raw: Any, path: str) -> PathModifier | None:
    if raw is None:
        return None
    d = as_map(raw, path)
    kind = as_str(d.get("type"), f"{path}.type")
    if kind == "ReplaceFullPath":
        value = as_str(d.get("replaceFullPath"), f"{path}.replaceFullPath", allow_empty=True)
        field = f"{path}.replaceFullPath"
    elif kind == "ReplacePrefixMatch":
        value = as_str(d.get("replacePrefixMatch"), f"{path}.replacePrefixMatch", allow_empty=True)
        field = f"{path}.replacePrefixMatch"
    else:
        raise ManifestError(f"{path}.type", f"unknown path modifier type {kind!r}")
    if value and not value.startswith("/"):
        raise ManifestError(field, "must start with '/'")
    if not value.isascii():  # the CRD's path pattern: percent-encode anything else
        raise ManifestError(field, "must be ASCII (percent-encode other characters)")
    return PathModifier(kind, value)


def _redirect(d: Mapping[str, Any], path: str) -> RequestRedirect:
    scheme = d.get("scheme")
    if scheme is not None and scheme not in ("http", "https"):
        raise ManifestError(f"{path}.scheme", f"must be 'http' or 'https', got {scheme!r}")
    code = as_int(d.get("statusCode", 302), f"{path}.statusCode", 300, 399)
    if code not in REDIRECT_CODES:
        raise ManifestError(f"{path}.statusCode", f"must be one of {sorted(REDIRECT_CODES)}, got {code}")
    host = d.get("hostname")
    port = d.get("port")
    return RequestRedirect(
        scheme=scheme,
        hostname=None if host is None else as_str(host, f"{path}.hostname"),
        path=_path_modifier(d.get("path"), f"{path}.path"),
        port=None if port is None else as_int(port, f"{path}.port", 1, 65535),
        status_code=code,
    )


def _mirror(d: Mapping[str, Any], path: str) -> RequestMirror:
    backend = backend_object_ref(as_map(d.get("backendRef"), f"{path}.backendRef"), f"{path}.backendRef")
    if "percent" in d and "fraction" in d:
        raise ManifestError(path, "only one of percent or fraction may be specified")
    percent = 100.0
    if "percent" in d:
        percent = float(as_int(d["percent"], f"{path}.percent", 0, 100))
    elif "fraction" in d:
        f = as_map(d["fraction"], f"{path}.fraction")
        denominator = as_int(f.get("denominator", 100), f"{path}.fraction.denominator", 1, 2**31 - 1)
        numerator = as_int(f.get("numerator"), f"{path}.fraction.numerator", 0, 2**31 - 1)
        if numerator > denominator:
            raise ManifestError(f"{path}.fraction", "numerator must be less than or equal to denominator")
        percent = 100.0 * numerator / denominator
    return RequestMirror(backend=backend, percent=percent)
