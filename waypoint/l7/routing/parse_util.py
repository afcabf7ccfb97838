"""Small typed readers for manifest dicts: each failure names the field it read."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from waypoint.errors import ManifestError
from waypoint.l7.routing.model import BackendObjectRef, HeaderMatch, QueryParamMatch

# GEP-2257 Gateway API duration: 1-4 "<1-5 digits><h|m|s|ms>" groups, e.g. "1h30m", "500ms", "0s".
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# RFC 7230 token: what a header name may be (HTTPHeaderName in shared_types.go).
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


def as_map(raw: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ManifestError(field, f"expected an object, got {type(raw).__name__}")
    return raw


def as_list(raw: Any, field: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ManifestError(field, f"expected a list, got {type(raw).__name__}")
    return raw


def as_str(raw: Any, field: str, *, allow_empty: bool = False) -> str:
    if raw is None:
        raise ManifestError(field, "is required")
    if not isinstance(raw, str):
        raise ManifestError(field, f"expected a string, got {type(raw).__name__}")
    if not raw and not allow_empty:
        raise ManifestError(field, "must not be empty")
    return raw


def as_int(raw: Any, field: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ManifestError(field, f"expected an integer, got {raw!r}")
    if not low <= raw <= high:
        raise ManifestError(field, f"{raw} is outside {low}..{high}")
    return raw


def parse_duration(raw: Any, field: str) -> float:
    """A Gateway API Duration in seconds (GEP-2257): "10s", "1h30m", "250ms"."""
    text = as_str(raw, field)
    if not _DURATION.match(text):
        raise ManifestError(field, f"not a Gateway API duration (like 10s, 1h30m, 500ms): {text!r}")
    return sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))


def compile_regex(pattern: str, field: str) -> re.Pattern[str]:
    """Compile once at load. Envoy uses RE2; Python's syntax is a superset, so what RE2 rejects
    (backreferences, lookaround) is accepted here: a known difference, reported by no one."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ManifestError(field, f"invalid regular expression: {e}") from None


def header_name(raw: Any, field: str) -> str:
    name = as_str(raw, field)
    if not _HEADER_NAME.match(name):
        raise ManifestError(field, f"not a valid HTTP header name: {name!r}")
    return name.lower()


M = TypeVar("M", HeaderMatch, QueryParamMatch)


def name_value_matches(
    raw: Any, field: str, what: str, read_name: Callable[[Any, str], str], make: Callable[..., M]
) -> tuple[M, ...]:
    """An HTTPHeaderMatch or HTTPQueryParamMatch list: ``Exact`` or ``RegularExpression`` (compiled
    here, once); of entries with the same name only the first counts ("only the first entry with an
    equivalent name MUST be considered", httproute_types.go)."""
    out: list[M] = []
    seen: set[str] = set()
    for i, item in enumerate(as_list(raw or [], field)):
        p = f"{field}[{i}]"
        d = as_map(item, p)
        name = read_name(d.get("name"), f"{p}.name")
        value = as_str(d.get("value"), f"{p}.value", allow_empty=True)
        kind = as_str(d.get("type", "Exact"), f"{p}.type")
        if kind not in ("Exact", "RegularExpression"):
            raise ManifestError(f"{p}.type", f"unknown {what} match type {kind!r}")
        regex = compile_regex(value, f"{p}.value") if kind == "RegularExpression" else None
        if name in seen:
            continue
        seen.add(name)
        out.append(make(name, value, kind, regex))
    return tuple(out)


def header_matches(raw: Any, field: str) -> tuple[HeaderMatch, ...]:
    """HTTPHeaderMatch list: names are header names, compared case-insensitively (lower-cased)."""
    return name_value_matches(raw, field, "header", header_name, HeaderMatch)


def query_param_matches(raw: Any, field: str) -> tuple[QueryParamMatch, ...]:
    """HTTPQueryParamMatch list: names are compared case-sensitively, as the spec says."""
    return name_value_matches(raw, field, "query param", as_str, QueryParamMatch)


def backend_object_ref(d: Mapping[str, Any], path: str) -> BackendObjectRef:
    """BackendObjectReference; a Service reference must name a port (CRD validation rule)."""
    group = as_str(d.get("group", ""), f"{path}.group", allow_empty=True)
    kind = as_str(d.get("kind", "Service"), f"{path}.kind")
    port = d.get("port")
    ns = d.get("namespace")
    if port is None and kind == "Service" and group in ("", "core"):
        raise ManifestError(f"{path}.port", "port is required when referring to a Service")
    return BackendObjectRef(
        name=as_str(d.get("name"), f"{path}.name"),
        group=group,
        kind=kind,
        namespace=None if ns is None else as_str(ns, f"{path}.namespace"),
        port=None if port is None else as_int(port, f"{path}.port", 1, 65535),
    )
