"""Envoy's access-log command operators, each as an inline Python expression (sans-I/O).

Split from :mod:`.access_log_format`, which parses a TEXT or JSON format and compiles it into one
function: this module is what each ``%OPERATOR%`` means here, and the helpers the generated code
calls. The operators are Envoy's (``docs/root/configuration/observability/access_log/usage.rst``,
"Command Operators").

Supported: the operators of Istio's two default formats and a few close relatives (see
:data:`_OPERATORS`), ``REQ``/``RESP`` with Envoy's ``A?B`` fallback and ``:N`` truncation, and
``START_TIME`` with or without a strftime format (``%3f``/``%6f``/``%9f`` fractions as Envoy). An
operator we cannot fill honestly is refused with :class:`FormatError` at load (Envoy too refuses an
unknown operator: its listener config is rejected).

What a record is: the finished request's :class:`~waypoint.l7.filter.RequestContext` (duck-typed
here, so opaque TCP can be logged through a context with an empty request head), plus the few
values worked out once per line (:class:`LineFacts`).

Hot path: an operator is an inline expression (slot reads, a header scan in C, a memoised helper
call for addresses), never a function per operator; the wall-clock second of ``START_TIME`` is
formatted once per second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple


class FormatError(ValueError):
    """A format Envoy would refuse (unknown operator, bad argument); the message says which."""


class LineFacts:
    """What several operators share, worked out once per line by the access-log filter."""

    __slots__ = ("cluster_domain", "details", "duration_ms", "flags", "sent", "status", "wall")

    def __init__(self, status: int, flags: str, details: str | None, sent: int, duration_ms: int,
                 wall: float, cluster_domain: str) -> None:
        self.status = status
        self.flags = flags
        self.details = details
        self.sent = sent
        self.duration_ms = duration_ms
        self.wall = wall  # the request's start, wall clock (time.time() scale)
        self.cluster_domain = cluster_domain


# ---- helpers the generated code calls -----------------------------------------------------------


def _addr(pair: tuple[str, int] | None) -> str | None:
    if pair is None:
        return None
    host, port = pair
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _memo(fn: Callable[[Any], Any], limit: int = 4096) -> Callable[[Any], Any]:
    """``fn`` remembered per object (connections' addresses, endpoints, services: long-lived values
    seen by many lines). The cache holds each object, so its id cannot be reused while cached."""
    cache: dict[int, tuple[Any, Any]] = {}

    def get(obj: Any) -> Any:
        hit = cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if len(cache) >= limit:
            cache.clear()
        value = cache[id(obj)] = (obj, fn(obj))
        return value[1]

    return get


def _target_addr(target: Any) -> str | None:
    return None if target is None else _addr((target.address, target.port))


def _cluster_name(service: Any, kind: str, domain: str) -> str:
    """Istio's waypoint cluster name for the backend: ``inbound-vip|<port>|<http|tcp>|<host>``
    (``BuildSubsetKey(TrafficDirectionInboundVIP, ...)``, ``listener_waypoint.go``)."""
    return f"inbound-vip|{service.port}|{kind}|{service.name}.{service.namespace}.svc.{domain}"


def helper_namespace() -> dict[str, Any]:
    """The generated function's helpers, with caches of their own (one set per format)."""
    addr = _memo(_addr)
    target_addr = _memo(_target_addr)
    clusters: dict[tuple[int, str, str], tuple[Any, str]] = {}

    def upstream_host(ctx: Any) -> str | None:
        return target_addr(getattr(ctx.upstream, "target", None))  # type: ignore[no-any-return]

    def cluster(ctx: Any, f: LineFacts) -> str | None:
        route = ctx.route
        service = route.backend if route is not None and route.backend is not None else ctx.info.dialled
        if service is None:
            return None
        key = (id(service), "http" if ctx.request.method else "tcp", f.cluster_domain)
        hit = clusters.get(key)
        if hit is None or hit[0] is not service:
            if len(clusters) >= 4096:
                clusters.clear()
            hit = clusters[key] = (service, _cluster_name(service, key[1], key[2]))
        return hit[1]

    return {**_HELPERS, "_addr": addr, "_upstream_host": upstream_host, "_cluster": cluster}


def _protocol(ctx: Any) -> str | None:
    if not ctx.request.method:
        return None  # opaque TCP: Envoy's %PROTOCOL% is unset
    return "HTTP/2" if ctx.info.http2 else "HTTP/1.1"


def _route_name(ctx: Any) -> str | None:
    """The route's name; a forward with no route of its own is Istio's default inbound route, named
    ``default`` (``BuildDefaultHTTPInboundRoute``); no route matched: ``-``."""
    route = ctx.route
    if route is None:
        return None
    return route.route_name or ("default" if route.backend is not None else None)


def _hdr(headers: Any, key: bytes) -> str | None:
    for n, v in headers:
        if n == key:
            return v.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _resp_hdr(ctx: Any, key: bytes) -> str | None:
    response = ctx.response
    return None if response is None else _hdr(response.headers, key)


def _original_path(ctx: Any) -> str | None:
    # Envoy sets x-envoy-original-path when a route rewrote the path; our router rewrites the head in
    # place and the request view keeps the path as the client sent it, which is what it would say.
    return ctx.view().path if ctx.request.method else None


def _trunc(value: Any, n: int) -> Any:
    return value[:n] if isinstance(value, str) else value


def _json(value: Any) -> str:
    return "null" if value is None or value == "" else encode_basestring(value)  # type: ignore[no-any-return]


def _side(pair: tuple[str, int] | None, i: int) -> Any:
    return None if pair is None else pair[i]


_HELPERS: dict[str, Any] = {
    "_protocol": _protocol, "_route_name": _route_name, "_hdr": _hdr, "_resp_hdr": _resp_hdr,
    "_original_path": _original_path, "_trunc": _trunc, "_json": _json, "_side": _side,
}


class Op(NamedTuple):
    """One operator as an inline Python expression over ``ctx`` and ``f`` (:class:`LineFacts`)."""

    expr: str
    typed: bool = False  # always an int: %d in TEXT, a number in JSON


NO_VALUE = Op("None")
_OPERATORS: dict[str, Op] = {
    "RESPONSE_CODE": Op("f.status", True),
    "RESPONSE_FLAGS": Op("f.flags"),
    "RESPONSE_CODE_DETAILS": Op("f.details"),
    "BYTES_RECEIVED": Op("ctx.request_bytes", True),
    "BYTES_SENT": Op("f.sent", True),
    "DURATION": Op("f.duration_ms", True),
    "PROTOCOL": Op("_protocol(ctx)"),
    "UPSTREAM_HOST": Op("_upstream_host(ctx)"),
    "UPSTREAM_REMOTE_ADDRESS": Op("_upstream_host(ctx)"),
    "UPSTREAM_CLUSTER": Op("_cluster(ctx, f)"),
    "UPSTREAM_CLUSTER_RAW": Op("_cluster(ctx, f)"),
    "ROUTE_NAME": Op("_route_name(ctx)"),
    "DOWNSTREAM_REMOTE_ADDRESS": Op("_addr(ctx.info.peer_address)"),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": Op("_addr(ctx.info.peer_address)"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": Op("_side(ctx.info.peer_address, 0)"),
    "DOWNSTREAM_REMOTE_PORT": Op("_side(ctx.info.peer_address, 1)"),
    # the waypoint's inner listener sees the original destination (the HBONE :authority) as local
    "DOWNSTREAM_LOCAL_ADDRESS": Op("_addr(ctx.info.destination)"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": Op("_side(ctx.info.destination, 0)"),
    "DOWNSTREAM_PEER_URI_SAN": Op("ctx.info.peer_identity"),
    # what the waypoint does not know or does not do: Envoy prints "-" for them as well when unset
    "CONNECTION_TERMINATION_DETAILS": NO_VALUE,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": NO_VALUE,
    "UPSTREAM_LOCAL_ADDRESS": NO_VALUE,
    "REQUESTED_SERVER_NAME": NO_VALUE,
}

_PSEUDO = {":method": "ctx.request.method", ":path": "ctx.request.path", ":authority": "ctx.request.authority",
           "host": "ctx.request.authority", ":scheme": "ctx.request.scheme"}


def _header_expr(kind: str, name: str) -> str:
    if kind == "RESP":
        return f"_resp_hdr(ctx, {name.encode('latin-1')!r})"
    if name in _PSEUDO:
        return f"({_PSEUDO[name]} or None)"
    if name == "x-envoy-original-path":
        return "_original_path(ctx)"
    return f"_hdr(ctx.request.headers, {name.encode('latin-1')!r})"


_FRACTION = re.compile(r"%([1-9]?)f")


class _Clock:
    """``START_TIME``: Envoy's default ``2016-04-15T20:17:00.310Z`` (UTC, milliseconds), or a strftime
    format with Envoy's ``%Nf`` fractions. The part above the fraction is cached per second."""

    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt
        self._second = -1
        self._prefix: list[str] = []
        self._ms = -1
        self._last = ""

    def __call__(self, f: LineFacts) -> str:
        wall = f.wall
        if self.fmt is None:  # the default: the same text for every line of one millisecond
            ms = int(wall * 1000)
            if ms != self._ms:
                second, frac_ms = divmod(ms, 1000)
                if second != self._second:
                    self._second = second
                    self._prefix = [time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))]
                self._ms = ms
                self._last = f"{self._prefix[0]}{frac_ms:03d}Z"
            return self._last
        second = int(wall)
        if second != self._second:
            self._second = second
            tm = time.gmtime(second)  # split at the fractions: strftime the pieces between them
            self._prefix = [time.strftime(p, tm) if i % 2 == 0 else p for i, p in enumerate(_FRACTION.split(self.fmt))]
        frac = wall - second
        out = []
        for i, piece in enumerate(self._prefix):
            if i % 2 == 0:
                out.append(piece)
            else:
                digits = int(piece or "9")
                out.append(f"{int(frac * 10 ** digits):0{digits}d}")
        return "".join(out)


def compile_operator(name: str, arg: str | None, limit: str | None, bind: Callable[[Any], str]) -> Op:
    """One ``%NAME(arg):limit%`` into its inline expression, or :class:`FormatError`. ``bind(obj)``
    puts an object in the generated function's namespace and returns its name there."""
    if name in ("REQ", "RESP"):
        if arg is None:
            raise FormatError(f"%{name}%: needs a header name, e.g. %{name}(X-REQUEST-ID)%")
        names = [n.strip().lower() for n in arg.split("?")]
        if not 1 <= len(names) <= 2 or not all(names):
            raise FormatError(f"%{name}({arg})%: expected HEADER or HEADER?ALTERNATIVE")
        op = Op(" or ".join(f"({_header_expr(name, n)})" for n in names))
    elif name == "START_TIME":
        op = Op(f"{bind(_Clock(arg or None))}(f)")
    else:
        found = _OPERATORS.get(name)
        if found is None:
            raise FormatError(f"%{name}% is not a supported command operator; supported: "
                              f"REQ(), RESP(), START_TIME, {', '.join(sorted(_OPERATORS))}")
        if arg is not None:
            raise FormatError(f"%{name}% takes no argument")
        op = found
    if limit and not op.typed:
        op = Op(f"_trunc({op.expr}, {int(limit)})")
    return op
