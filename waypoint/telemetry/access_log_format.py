"""Istio's access-log formats, TEXT and JSON, compiled once into a line formatter (sans-I/O).

Istio's waypoint writes Envoy access logs in one of two shapes (``IS:pilot/pkg/model/
telemetry_logging.go``): TEXT with :data:`ISTIO_TEXT_FORMAT` (``EnvoyTextLogFormat``) or a custom
``accessLogFormat``, and JSON with :data:`ISTIO_JSON_FORMAT` (``EnvoyJSONLogFormatIstio``) or the
custom format read as a JSON object. TEXT prints ``-`` for a missing value; JSON keeps a value that
is exactly one operator typed (numbers as numbers, a missing value as ``null``) and renders anything
else as a string, as Envoy's JSON formatter does.

What each command operator means, and which are supported, is :mod:`.access_log_operators`
(:class:`FormatError` and :class:`LineFacts` come from there and are re-exported here).

Hot path: a format is compiled once into one generated Python function whose body is a single
``%`` formatting of inline expressions (slot reads, a header scan in C, a helper call for addresses):
a function call per operator and per-part ``None`` checks cost three to four times as much for
Istio's 26-operator default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from waypoint.telemetry.access_log_operators import (
    NO_VALUE,
    FormatError,
    LineFacts,
    Op,
    compile_operator,
    helper_namespace,
)

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


_TOKEN = re.compile(r"%([A-Z_][A-Z0-9_]*)(?:\(([^)]*)\))?(?::(\d+))?%")


def _parse(text: str, bind: Callable[[Any], str]) -> list[str | Op]:
    """Literal text and operators, in order. A ``%`` that starts no operator stays literal (Envoy)."""
    parts: list[str | Op] = []
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
        self.namespace: dict[str, Any] = helper_namespace()

    def bind(self, obj: Any) -> str:
        name = f"_b{len(self.namespace)}"
        self.namespace[name] = obj
        return name

    def text(self, parts: list[str | Op]) -> tuple[str, list[str]]:
        """A TEXT ``%``-template and its value expressions: ``-`` for a missing value."""
        template, values = [], []
        for part in parts:
            if isinstance(part, str):
                template.append(part.replace("%", "%%"))
            elif part is NO_VALUE:
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
            elif len(parts) == 1 and isinstance(parts[0], Op):  # one operator: a typed value
                op = parts[0]
                template.append("null" if op is NO_VALUE else "%d" if op.typed else "%s")
                if op is not NO_VALUE:
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


__all__ = [
    "ISTIO_JSON_FORMAT",
    "ISTIO_TEXT_FORMAT",
    "FormatError",
    "JsonFormat",
    "LineFacts",
    "LineFormat",
    "TextFormat",
    "compile_operator",
    "json_fields",
]
