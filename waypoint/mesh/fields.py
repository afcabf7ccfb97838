"""Typed reads from a loaded manifest, each naming the field path it failed on.

A rejected object must say exactly which field is wrong (``spec.ports[1].targetPort``), as
``kubectl apply`` would; these helpers carry the path so parsers stay short.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from waypoint.errors import ManifestError

# Kubernetes name shapes (k8s.io/apimachinery/pkg/util/validation).
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # plus: <= 15 chars, has a letter, no "--"


def key_path(path: str, key: str) -> str:
    """``metadata.labels`` + ``istio.io/x`` -> ``metadata.labels["istio.io/x"]``."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def mapping(value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise ManifestError(path, "required")
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(path, f"must be a mapping, not {type(value).__name__}")
    return value


def sequence(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(path, f"must be a list, not {type(value).__name__}")
    return value


def string(value: Any, path: str, *, required: bool = False, default: str = "") -> str:
    if value is None:
        if required:
            raise ManifestError(path, "required")
        return default
    if not isinstance(value, str):
        raise ManifestError(path, f"must be a string, not {type(value).__name__}")
    if required and not value:
        raise ManifestError(path, "must not be empty")
    return value


def integer(value: Any, path: str, *, required: bool = False, default: int = 0) -> int:
    if value is None:
        if required:
            raise ManifestError(path, "required")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(path, f"must be an integer, not {value!r}")
    return value


def port_number(value: Any, path: str, *, required: bool = True) -> int:
    n = integer(value, path, required=required)
    if required and not 1 <= n <= 65535:
        raise ManifestError(path, f"must be between 1 and 65535, not {n}")
    return n


def port_name(value: str, path: str) -> str:
    """IANA_SVC_NAME, the shape of a named container port (and of a named ``targetPort``)."""
    if (
        len(value) > 15
        or not _IANA_SVC_NAME.match(value)
        or "--" in value
        or not any(c.isalpha() for c in value)
    ):
        raise ManifestError(path, f"{value!r} is not a valid port name (IANA_SVC_NAME)")
    return value


def ip(value: Any, path: str) -> str:
    text = string(value, path, required=True)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ManifestError(path, f"{text!r} is not an IP address") from None


def dns_label(value: str, path: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ManifestError(path, f"{value!r} is not a valid DNS-1123 label")
    return value


def dns_subdomain(value: str, path: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise ManifestError(path, f"{value!r} is not a valid DNS-1123 subdomain")
    return value


def string_map(value: Any, path: str) -> dict[str, str]:
    """Labels, annotations, selectors: every value must be a string (as the API server demands)."""
    out: dict[str, str] = {}
    for k, v in mapping(value, path).items():
        if not isinstance(k, str) or not k:
            raise ManifestError(path, f"key {k!r} must be a non-empty string")
        if not isinstance(v, str):
            raise ManifestError(key_path(path, k), f"must be a string, not {v!r} (quote it)")
        out[k] = v
    return out
