"""The part of CEL an access-log ``filter.expression`` may use here, compiled to a Python predicate.

The Telemetry API's ``accessLogging[].filter.expression`` is a CEL expression over Envoy's
attributes (``istio/api`` ``telemetry/v1/telemetry.proto`` ``AccessLogging.Filter``; Envoy
``docs/root/intro/arch_overview/advanced/attributes.rst``); a request is logged when it is true.
We do not embed a CEL engine: we accept the subset we can evaluate exactly and refuse the rest at
load, naming what is unsupported, rather than guess.

Accepted:

- ``||``, ``&&``, ``!``, parentheses, ``true``/``false``;
- comparisons ``== != < <= > >=`` between an attribute and a literal (integer or quoted string);
- string methods ``startsWith``, ``endsWith``, ``contains`` on a string attribute;
- attributes ``response.code`` (int), ``response.code_details``, ``request.method``,
  ``request.path``, ``request.url_path`` (the path without the query), ``request.host``,
  ``request.scheme``, ``request.id`` and ``request.headers['name']``.

Envoy's evaluation of an attribute that is absent (a header not sent) is an error, and an erroring
filter does not log; here such a comparison is false, with the same result for ``==`` (``!=`` of an
absent header is false too, as the error would be).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any, Any], bool]  # (RequestContext, LineFacts) -> log this line?


class ExpressionError(ValueError):
    """An expression outside the supported subset, or malformed; the message says where."""


_TOKEN = re.compile(
    r"""\s*(?:(\|\||&&|==|!=|<=|>=|[<>!()\[\].,])|([A-Za-z_][A-Za-z0-9_]*)|(-?\d+)|'([^']*)'|"([^"]*)")"""
)


def _header(name: str) -> Callable[[Any, Any], str | None]:
    key = name.lower().encode("latin-1")

    def get(ctx: Any, facts: Any) -> str | None:
        for n, v in ctx.request.headers:
            if n == key:
                return v.decode("latin-1")  # type: ignore[no-any-return]
        return None

    return get


def _nonempty(value: str) -> str | None:
    return value or None


_ATTRIBUTES: dict[str, tuple[type, Callable[[Any, Any], Any]]] = {
    "response.code": (int, lambda ctx, f: f.status),
    "response.code_details": (str, lambda ctx, f: f.details),
    "request.method": (str, lambda ctx, f: _nonempty(ctx.request.method)),
    "request.path": (str, lambda ctx, f: _nonempty(ctx.request.path)),
    "request.url_path": (str, lambda ctx, f: _nonempty(ctx.request.path.partition("?")[0])),
    "request.host": (str, lambda ctx, f: _nonempty(ctx.request.authority)),
    "request.scheme": (str, lambda ctx, f: _nonempty(ctx.request.scheme)),
    "request.id": (str, _header("x-request-id")),
}

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
_METHODS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith, "endsWith": str.endswith, "contains": lambda a, b: b in a,
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise ExpressionError(f"unexpected {text[pos:].strip()[:20]!r} at offset {pos}")
            pos = m.end()
            punct, ident, number, sq, dq = m.groups()
            if punct:
                self.tokens.append(("op", punct))
            elif ident:
                self.tokens.append(("id", ident))
            elif number is not None:
                self.tokens.append(("int", int(number)))
            else:
                self.tokens.append(("str", sq if sq is not None else dq))
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (value is not None and tok != ("op", value)):
            raise ExpressionError(f"expected {value or 'more'} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.or_()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return pred

    def or_(self) -> Predicate:
        terms = [self.and_()]
        while self.peek() == ("op", "||"):
            self.take()
            terms.append(self.and_())
        if len(terms) == 1:
            return terms[0]
        return lambda ctx, f: any(t(ctx, f) for t in terms)

    def and_(self) -> Predicate:
        terms = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take()
            terms.append(self.unary())
        if len(terms) == 1:
            return terms[0]
        return lambda ctx, f: all(t(ctx, f) for t in terms)

    def unary(self) -> Predicate:
        if self.peek() == ("op", "!"):
            self.take()
            inner = self.unary()
            return lambda ctx, f: not inner(ctx, f)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.or_()
            self.take(")")
            return inner
        if self.peek() in (("id", "true"), ("id", "false")):
            value = self.take()[1] == "true"
            return lambda ctx, f: value
        return self.comparison()

    def attribute(self) -> tuple[str, type, Callable[[Any, Any], Any]]:
        kind, first = self.take()
        if kind != "id":
            raise ExpressionError(f"expected an attribute, found {first!r} in {self.text!r}")
        name = first
        while self.peek() == ("op", ".") and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][0] == "id" \
                and name in ("request", "response", "connection", "source", "destination", "upstream"):
            self.take()
            name = f"{name}.{self.take()[1]}"
        if name == "request.headers" and self.peek() == ("op", "["):
            self.take()
            kind, header = self.take()
            if kind != "str":
                raise ExpressionError(f"request.headers[...] needs a quoted header name in {self.text!r}")
            self.take("]")
            return f"request.headers[{header!r}]", str, _header(header)
        found = _ATTRIBUTES.get(name)
        if found is None:
            raise ExpressionError(f"attribute {name!r} is not supported here; supported: "
                                  f"{', '.join(sorted(_ATTRIBUTES))}, request.headers['name']")
        return name, found[0], found[1]

    def comparison(self) -> Predicate:
        name, typ, get = self.attribute()
        tok = self.peek()
        if tok == ("op", ".") and typ is str:
            self.take()
            method = self.take()[1]
            fn = _METHODS.get(method)
            if fn is None:
                raise ExpressionError(f"method {method!r} is not supported (only {', '.join(_METHODS)})")
            self.take("(")
            arg = self.literal(str, name)
            self.take(")")
            return lambda ctx, f: (lambda v: v is not None and fn(v, arg))(get(ctx, f))
        if tok is None or tok[0] != "op" or tok[1] not in _COMPARE:
            raise ExpressionError(f"expected a comparison after {name} in {self.text!r}")
        self.take()
        compare = _COMPARE[tok[1]]
        value = self.literal(typ, name)

        def pred(ctx: Any, f: Any) -> bool:
            v = get(ctx, f)
            return v is not None and compare(v, value)

        return pred

    def literal(self, typ: type, name: str) -> Any:
        kind, value = self.take()
        want = "int" if typ is int else "str"
        if kind != want:
            raise ExpressionError(f"{name} compares with {'an integer' if typ is int else 'a quoted string'}, "
                                  f"not {value!r}")
        return value


def compile_expression(text: str) -> Predicate:
    """``text`` into ``predicate(ctx, facts) -> bool``, or :class:`ExpressionError`."""
    if not text.strip():
        raise ExpressionError("empty expression")
    return _Parser(text).parse()
