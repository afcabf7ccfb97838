"""The CONNECT request's `:authority` and the three headers ztunnel puts beside it.

Wire shapes follow facts digest §1.4 (``ZT:src/proxy/outbound.rs`` ``create_hbone_request``,
``build_forwarded``; ``ZT:src/baggage.rs``; ``ZT:src/proxy.rs`` trace parent). Pure functions:
no I/O, randomness injected where it is needed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# A DNS name as it may appear in `:authority` (double HBONE sends `<svc hostname>:<port>`).
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


@dataclass(frozen=True, slots=True)
class Authority:
    """A parsed CONNECT target. ``host`` has no brackets, even for IPv6."""

    host: str
    port: int
    is_ip: bool

    def __str__(self) -> str:
        return format_authority(self.host, self.port) if self.is_ip else f"{self.host}:{self.port}"


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise ValueError(f"bad port in authority {whole!r}")
    port = int(text)
    if not 0 < port <= 65535:
        raise ValueError(f"port out of range in authority {whole!r}")
    return port


def parse_authority(s: str) -> Authority:
    """Parse ``ip:port``, ``[v6]:port`` or ``host:port`` (ztunnel answers a failure with 400).

    A bare IPv6 address without brackets is rejected: the port would be ambiguous.
    """
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1 : end + 2] != ":":
            raise ValueError(f"bad bracketed authority {s!r}")
        host = s[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"bad IPv6 address in authority {s!r}") from exc
        return Authority(host, _parse_port(s[end + 2 :], s), True)
    host, sep, port_text = s.rpartition(":")
    if not sep or not host:
        raise ValueError(f"authority {s!r} needs host:port")
    port = _parse_port(port_text, s)
    if ":" in host:
        raise ValueError(f"IPv6 authority {s!r} must be bracketed")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
            raise ValueError(f"bad host in authority {s!r}") from None
        return Authority(host, port, False)
    return Authority(host, port, True)


def format_authority(ip: str, port: int) -> str:
    """``10.0.0.1:80`` or ``[::1]:80`` (facts §1.4: IPv6 uses the bracketed form)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# Key order as ztunnel writes it (ZT:src/baggage.rs baggage_header_val).
_WORKLOAD_TYPES = frozenset({"deployment", "pod", "job", "cronjob", "replicaset", "statefulset", "daemonset"})


def build_baggage(
    *,
    cluster: str | None = None,
    namespace: str | None = None,
    workload_type: str | None = None,
    workload_name: str | None = None,
    service: str | None = None,
    version: str | None = None,
    region: str | None = None,
    zone: str | None = None,
) -> str:
    """The W3C ``baggage`` value describing the source workload; absent fields are omitted."""
    parts: list[str] = []
    if cluster:
        parts.append(f"k8s.cluster.name={cluster}")
    if namespace:
        parts.append(f"k8s.namespace.name={namespace}")
    if workload_type and workload_name:
        if workload_type not in _WORKLOAD_TYPES:
            raise ValueError(f"unknown workload type {workload_type!r}")
        parts.append(f"k8s.{workload_type}.name={workload_name}")
    if service:
        parts.append(f"service.name={service}")
    if version:
        parts.append(f"service.version={version}")
    if region:
        parts.append(f"cloud.region={region}")
    if zone:
        parts.append(f"cloud.availability_zone={zone}")
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Baggage:
    """The peer metadata a ``baggage`` header carries (``ZT:src/baggage.rs`` ``parse_baggage_header``)."""

    cluster: str | None = None
    namespace: str | None = None
    workload_type: str | None = None
    workload_name: str | None = None
    service: str | None = None
    version: str | None = None
    region: str | None = None
    zone: str | None = None


_BAGGAGE_KEYS = {
    "k8s.cluster.name": "cluster",
    "k8s.namespace.name": "namespace",
    "service.name": "service",
    "service.version": "version",
    "cloud.region": "region",
    "cloud.availability_zone": "zone",
}


def parse_baggage(values: Iterable[str]) -> Baggage:
    """Every ``baggage`` header of a request, read as ztunnel reads them: W3C list members
    ``key=value`` (properties after ``;`` dropped, values percent-decoded), known keys kept,
    the rest ignored; a malformed member is skipped, never an error (the header is a hint)."""
    found: dict[str, str] = {}
    for value in values:
        for member in value.split(","):
            key, sep, raw = member.split(";", 1)[0].partition("=")
            key, raw = key.strip(), urllib.parse.unquote(raw.strip())
            if not sep or not key or not raw:
                continue
            field = _BAGGAGE_KEYS.get(key)
            if field is not None:
                found[field] = raw
            elif key.startswith("k8s.") and key.endswith(".name") and key[4:-5] in _WORKLOAD_TYPES:
                found["workload_type"], found["workload_name"] = key[4:-5], raw
    return Baggage(**found)


def build_forwarded(client_ip: str, client_port: int, host: str | None = None) -> str:
    """``for="<ip:port>"`` always quoted, plus ``;host=<fqdn>`` when service-addressed."""
    value = f'for="{format_authority(client_ip, client_port)}"'
    return f"{value};host={host}" if host else value


def parse_forwarded_for(value: str) -> tuple[str, int | None] | None:
    """The client address in the first ``for=`` of a ``forwarded`` header, or None.

    The waypoint reads its client's address from here (the TCP peer is the source ztunnel).
    Obfuscated identifiers (``_hidden``, ``unknown``) give None.
    """
    first = value.split(",", 1)[0]
    for pair in first.split(";"):
        key, sep, raw = pair.strip().partition("=")
        if not sep or key.strip().lower() != "for":
            continue
        node = raw.strip().strip('"')
        try:
            if node.startswith("["):
                end = node.index("]")
                ip = str(ipaddress.IPv6Address(node[1:end]))
                rest = node[end + 1 :]
                return ip, (int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None)
            host, sep, port = node.rpartition(":")
            if sep and port.isdigit():
                return str(ipaddress.IPv4Address(host)), int(port)
            return str(ipaddress.ip_address(node)), None
        except ValueError:
            return None
    return None


def new_traceparent(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A fresh W3C ``traceparent``, one per connection, for log correlation only (facts §1.4)."""
    raw = random_bytes(24)
    return f"00-{raw[:16].hex()}-{raw[16:].hex()}-00"


_CONNECT_PSEUDO = frozenset({":method", ":authority"})
_REQUEST_PSEUDO = frozenset({":method", ":authority", ":scheme", ":path", ":protocol"})


def check_connect(headers: tuple[tuple[str, str], ...]) -> int | tuple[str, tuple[tuple[str, str], ...]]:
    """Validate an inbound request head as an ordinary CONNECT (RFC 9113 §8.5).

    Returns ``(authority, regular headers)`` when it is one; ``400`` for a well-formed request
    with another method (ztunnel answers 400, facts §1.4); ``0`` for a malformed head (missing
    or misplaced pseudo-headers, ``:scheme``/``:path`` on CONNECT, extended CONNECT's
    ``:protocol`` which we never advertise): a stream error PROTOCOL_ERROR (RFC 9113 §8.1.1).
    """
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    for name, value in headers:
        if name[:1] == ":":
            if regular or name in pseudo or name not in _REQUEST_PSEUDO:
                return 0
            pseudo[name] = value
        else:
            regular.append((name, value))
    method = pseudo.get(":method")
    if method == "CONNECT":
        if pseudo.keys() != _CONNECT_PSEUDO or not pseudo[":authority"]:
            return 0
        return pseudo[":authority"], tuple(regular)
    if method and ":scheme" in pseudo and ":path" in pseudo and ":protocol" not in pseudo:
        return 400
    return 0
