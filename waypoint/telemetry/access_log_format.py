"""Envoy's access-log command operators, compiled once into a line formatter (sans-I/O).

Istio's waypoint writes Envoy access logs in one of two shapes (``IS:pilot/pkg/model/
telemetry_logging.go``): TEXT with :data:`ISTIO_TEXT_FORMAT` (``EnvoyTextLogFormat``) or a custom
``accessLogFormat``, and JSON with :data:`ISTIO_JSON_FORMAT` (``EnvoyJSONLogFormatIstio``) or the
custom format read as a JSON object. The operators are Envoy's (``docs/root/configuration/
observability/access_log/usage.rst``, "Command Operators"): TEXT prints ``-`` for a missing value;
JSON keeps a value that is exactly one operator typed (numbers as numbers, a missing value as
``null``) and renders anything else as a string, as Envoy's JSON formatter does.

Supported: the operators of Istio's two default formats and a few close relatives (see
:data:`_OPERATORS`), ``REQ``/``RESP`` with Envoy's ``A?B`` fallback and ``:N`` truncation, and
``START_TIME`` with or without a strftime format (``%3f``/``%6f``/``%9f`` fractions as Envoy). An
operator we cannot fill honestly is refused with :class:`FormatError` at load (Envoy too refuses an
unknown operator: its listener config is rejected).

What a record is: the finished request's :class:`~waypoint.l7.filter.RequestContext` (duck-typed
here, so opaque TCP can be logged through a context with an empty request head), plus the few
values worked out once per line (:class:`LineFacts`).

Hot path: a format is compiled once into one generated Python function whose body is a single
``%`` formatting of inline expressions (slot reads, a header scan in C, a helper call for addresses):
a function call per operator and per-part ``None`` checks cost three to four times as much for
Istio's 26-operator default. The wall-clock second of ``START_TIME`` is formatted once per second.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
"""Istio's ``EnvoyTextLogFormat`` (1.9 onwards, ``telemetry_logging.go``)."""

ISTIO_JSON_FORMAT: Mapping[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
"""Istio's ``EnvoyJSONLogFormatIstio`` keys and operators."""

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


def _helpers() -> dict[str, Any]:
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


class _Op(NamedTuple):
    """One operator as an inline Python expression over ``ctx`` and ``f`` (:class:`LineFacts`)."""

    expr: str
    typed: bool = False  # always an int: %d in TEXT, a number in JSON


_NONE = _Op("None")
_OPERATORS: dict[str, _Op] = {
    "RESPONSE_CODE": _Op("f.status", True),
    "RESPONSE_FLAGS": _Op("f.flags"),
    "RESPONSE_CODE_DETAILS": _Op("f.details"),
    "BYTES_RECEIVED": _Op("ctx.request_bytes", True),
    "BYTES_SENT": _Op("f.sent", True),
    "DURATION": _Op("f.duration_ms", True),
    "PROTOCOL": _Op("_protocol(ctx)"),
    "UPSTREAM_HOST": _Op("_upstream_host(ctx)"),
    "UPSTREAM_REMOTE_ADDRESS": _Op("_upstream_host(ctx)"),
    "UPSTREAM_CLUSTER": _Op("_cluster(ctx, f)"),
    "UPSTREAM_CLUSTER_RAW": _Op("_cluster(ctx, f)"),
    "ROUTE_NAME": _Op("_route_name(ctx)"),
    "DOWNSTREAM_REMOTE_ADDRESS": _Op("_addr(ctx.info.peer_address)"),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _Op("_addr(ctx.info.peer_address)"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _Op("_side(ctx.info.peer_address, 0)"),
    "DOWNSTREAM_REMOTE_PORT": _Op("_side(ctx.info.peer_address, 1)"),
    # the waypoint's inner listener sees the original destination (the HBONE :authority) as local
    "DOWNSTREAM_LOCAL_ADDRESS": _Op("_addr(ctx.info.destination)"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _Op("_side(ctx.info.destination, 0)"),
    "DOWNSTREAM_PEER_URI_SAN": _Op("ctx.info.peer_identity"),
    # what the waypoint does not know or does not do: Envoy prints "-" for them as well when unset
    "CONNECTION_TERMINATION_DETAILS": _NONE,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _NONE,
    "UPSTREAM_LOCAL_ADDRESS": _NONE,
    "REQUESTED_SERVER_NAME": _NONE,
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


_TOKEN = re.compile(r"%([A-Z_][A-Z0-9_]*)(?:\(([^)]*)\))?(?::(\d+))?%")


def compile_operator(name: str, arg: str | None, limit: str | None, bind: Callable[[Any], str]) -> _Op:
    """One ``%NAME(arg):limit%`` into its inline expression, or :class:`FormatError`. ``bind(obj)``
    puts an object in the generated function's namespace and returns its name there."""
    if name in ("REQ", "RESP"):
        if arg is None:
            raise FormatError(f"%{name}%: needs a header name, e.g. %{name}(X-REQUEST-ID)%")
        names = [n.strip().lower() for n in arg.split("?")]
        if not 1 <= len(names) <= 2 or not all(names):
            raise FormatError(f"%{name}({arg})%: expected HEADER or HEADER?ALTERNATIVE")
        op = _Op(" or ".join(f"({_header_expr(name, n)})" for n in names))
    elif name == "START_TIME":
        op = _Op(f"{bind(_Clock(arg or None))}(f)")
    else:
        found = _OPERATORS.get(name)
        if found is None:
            raise FormatError(f"%{name}% is not a supported command operator; supported: "
                              f"REQ(), RESP(), START_TIME, {', '.join(sorted(_OPERATORS))}")
        if arg is not None:
            raise FormatError(f"%{name}% takes no argument")
        op = found
    if limit and not op.typed:
        op = _Op(f"_trunc({op.expr}, {int(limit)})")
    return op


def _parse(text: str, bind: Callable[[Any], str]) -> list[str | _Op]:
    """Literal text and operators, in order. A ``%`` that starts no operator stays literal (Envoy)."""
    parts: list[str | _Op] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(compile_operator(m.group(1), m.group(2), m.group(3), bind))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


class _Compiler:
    """Builds one function ``line(ctx, f) -> str`` from ``%``-templates and inline expressions."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = _helpers()

    def bind(self, obj: Any) -> str:
        name = f"_b{len(self.namespace)}"
        self.namespace[name] = obj
        return name

    def text(self, parts: list[str | _Op]) -> tuple[str, list[str]]:
        """A TEXT ``%``-template and its value expressions: ``-`` for a missing value."""
        template, values = [], []
        for part in parts:
            if isinstance(part, str):
                template.append(part.replace("%", "%%"))
            elif part is _NONE:
                template.append("-")
            elif part.typed:
                template.append("%d")
                values.append(part.expr)
            else:
                template.append("%s")
                values.append(f"(({part.expr}) or '-')")
        return "".join(template), values

    def build(self, template: str, values: list[str]) -> Callable[[Any, LineFacts], str]:
        const = self.bind(template)
        args = ", ".join(values)
        src = f"def line(ctx, f):\n    return {const} % ({args}{',' if len(values) == 1 else ''})\n"
        exec(compile(src, "<access-log format>", "exec"), self.namespace)  # only our own expressions
        return self.namespace["line"]  # type: ignore[no-any-return]


class TextFormat:
    """A TEXT format string; Istio adds the trailing newline when a custom format lacks it
    (``fileAccessLogFormat``)."""

    def __init__(self, text: str = ISTIO_TEXT_FORMAT, *, newline: bool = True) -> None:
        if newline and not text.endswith("\n"):
            text += "\n"
        self.text = text
        compiler = _Compiler()
        self._line = compiler.build(*compiler.text(_parse(text, compiler.bind)))

    def __call__(self, ctx: Any, facts: LineFacts) -> str:
        return self._line(ctx, facts)


class JsonFormat:
    """A JSON object of ``key: format`` (Istio's default keys unless given), one object per line."""

    def __init__(self, fields: Mapping[str, Any] = ISTIO_JSON_FORMAT) -> None:
        self.fields = dict(fields)
        compiler = _Compiler()
        template, values = [], []
        for key, value in fields.items():
            template.append(json.dumps(str(key)).replace("%", "%%") + ":")
            parts = _parse(value, compiler.bind) if isinstance(value, str) else None
            if parts is None:  # a literal number/bool/null stays as it is
                template.append(json.dumps(value).replace("%", "%%"))
            elif len(parts) == 1 and isinstance(parts[0], _Op):  # one operator: a typed value
                op = parts[0]
                template.append("null" if op is _NONE else "%d" if op.typed else "%s")
                if op is not _NONE:
                    values.append(op.expr if op.typed else f"_json({op.expr})")
            else:  # literal text and operators: a string
                sub_template, sub_values = compiler.text(parts)
                template.append("%s")
                values.append(f"_json({compiler.bind(sub_template)} % ({', '.join(sub_values)},))"
                              if sub_values else repr(json.dumps(sub_template.replace("%%", "%"))))
            template.append(",")
        body = "".join(template[:-1]) if template else ""
        self._line = compiler.build("{" + body + "}\n", values)

    def __call__(self, ctx: Any, facts: LineFacts) -> str:
        return self._line(ctx, facts)


LineFormat = TextFormat | JsonFormat


def json_fields(text: str) -> dict[str, Any] | None:
    """A custom JSON ``accessLogFormat`` as its object, or None if it is not a JSON object (Istio then
    logs an error and uses the default keys: ``fileAccessLogWithDefaults``)."""
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None
