"""Codec-neutral HTTP messages: what filters read and change, whatever the wire (HTTP/1.1 or HTTP/2).

Header names are lower-case bytes and values bytes (as in ASGI and HPACK), in a plain list so a
filter can edit in place. Hop-by-hop headers (RFC 9110 §7.6.1) never appear here: each codec
strips them on the way in and adds its own framing on the way out, as Envoy's codecs do.
"""

from __future__ import annotations

from operator import itemgetter

from waypoint.l7.routing.decision import HeaderMutation

Header = tuple[bytes, bytes]
HeaderList = list[Header]

# What kind of event a queued or replayed piece of a message is: ``(kind, payload, end_stream)``
# with the head, a body chunk, or the trailers as payload (the chain, the codecs and the router
# queue events while a filter or a connection makes them wait).
HEADERS, DATA, TRAILERS = 0, 1, 2

_first = itemgetter(0)  # a header's name

# RFC 9110 §7.6.1 plus the legacy ones Envoy's HTTP/1 codec also drops (source/common/http/conn_manager_utility.cc).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"upgrade", b"trailer"}
)


class RequestHead:
    """A request's head. ``authority`` is Host / ``:authority``; ``upgrade`` names a requested protocol
    switch (``websocket``), HTTP/1.1 ``Upgrade`` or HTTP/2 extended CONNECT's ``:protocol``."""

    __slots__ = ("authority", "headers", "method", "path", "scheme", "upgrade")

    def __init__(
        self,
        method: str,
        path: str,
        authority: str,
        headers: HeaderList,
        scheme: str = "http",
        upgrade: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.scheme = scheme
        self.upgrade = upgrade

    def copy(self) -> RequestHead:
        return RequestHead(self.method, self.path, self.authority, list(self.headers), self.scheme, self.upgrade)

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.authority}{self.path})"


class ResponseHead:
    """A response's head: status and headers (no reason phrase: HTTP/2 has none, we regenerate it)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"ResponseHead({self.status})"


def header_lines(headers: HeaderList) -> bytes:
    """``name: value`` lines for HTTP/1.1, each ending in CRLF (joined in C: no per-header Python)."""
    if not headers:
        return b""
    return b"\r\n".join(map(b": ".join, headers)) + b"\r\n"


def get_header(headers: HeaderList, name: bytes) -> bytes | None:
    """First value of ``name`` (lower case), or None."""
    if name not in map(_first, headers):  # a miss (the usual x-request-id case) stays in C
        return None
    for n, v in headers:
        if n == name:
            return v
    return None


def remove_header(headers: HeaderList, name: bytes) -> None:
    if name in map(_first, headers):
        headers[:] = [h for h in headers if h[0] != name]


def set_header(headers: HeaderList, name: bytes, value: bytes) -> None:
    """Replace every ``name`` with one ``value`` (kept at the first occurrence's place)."""
    if name not in map(_first, headers):  # the usual case, searched in C
        headers.append((name, value))
        return
    for i, h in enumerate(headers):
        if h[0] == name:
            headers[i] = (name, value)
            rest = headers[i + 1 :]
            if any(n == name for n, _ in rest):  # rare: a repeated header; common case copies nothing
                headers[i + 1 :] = [h for h in rest if h[0] != name]
            return
    headers.append((name, value))


class _Compiled:
    """A mutation with its names lower-cased and everything encoded once, not per request."""

    __slots__ = ("add", "mutation", "remove", "set")

    def __init__(self, mutation: HeaderMutation) -> None:
        self.mutation = mutation  # kept alive: its id() is the cache key
        self.set = tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in mutation.set)
        self.add = tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in mutation.add)
        self.remove = tuple(n.lower().encode("latin-1") for n in mutation.remove)


_COMPILED: dict[int, _Compiled] = {}
_COMPILED_LIMIT = 4096  # mutations live in route tables; a new snapshot brings new ones


def _compiled(mutation: HeaderMutation) -> _Compiled:
    found = _COMPILED.get(id(mutation))
    if found is None or found.mutation is not mutation:
        if len(_COMPILED) >= _COMPILED_LIMIT:
            _COMPILED.clear()
        found = _COMPILED[id(mutation)] = _Compiled(mutation)
    return found


def apply_mutation(headers: HeaderList, mutation: HeaderMutation) -> None:
    """Gateway API HTTPHeaderFilter order: set, then add, then remove (names are case-insensitive).

    The encoded form is memoised by identity (a pure cache of immutable values): encoding names and
    values on every request was measurable on the hot path."""
    c = _compiled(mutation)
    for name, value in c.set:
        set_header(headers, name, value)
    if c.add:
        headers.extend(c.add)
    for name in c.remove:
        remove_header(headers, name)


def has_header(headers: HeaderList, name: bytes) -> bool:
    return name in map(_first, headers)


def is_grpc(headers: HeaderList) -> bool:
    ct = get_header(headers, b"content-type")
    return ct is not None and ct.startswith(b"application/grpc")
