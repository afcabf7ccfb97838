"""Codec-neutral HTTP messages: what filters read and change, whatever the wire (HTTP/1.1 or HTTP/2).

Header names are lower-case bytes and values bytes (as in ASGI and HPACK), in a plain list so a
filter can edit in place. Hop-by-hop headers (RFC 9110 §7.6.1) never appear here: each codec
strips them on the way in and adds its own framing on the way out, as Envoy's codecs do.
"""

from __future__ import annotations

from waypoint.l7.routing.decision import HeaderMutation

Header = tuple[bytes, bytes]
HeaderList = list[Header]

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


def get_header(headers: HeaderList, name: bytes) -> bytes | None:
    """First value of ``name`` (lower case), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def remove_header(headers: HeaderList, name: bytes) -> None:
    headers[:] = [h for h in headers if h[0] != name]


def set_header(headers: HeaderList, name: bytes, value: bytes) -> None:
    """Replace every ``name`` with one ``value`` (kept at the first occurrence's place)."""
    for i, (n, _) in enumerate(headers):
        if n == name:
            headers[i] = (name, value)
            headers[i + 1 :] = [h for h in headers[i + 1 :] if h[0] != name]
            return
    headers.append((name, value))


def apply_mutation(headers: HeaderList, mutation: HeaderMutation) -> None:
    """Gateway API HTTPHeaderFilter order: set, then add, then remove (names are case-insensitive)."""
    for name, value in mutation.set:
        set_header(headers, name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in mutation.add:
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    for name in mutation.remove:
        remove_header(headers, name.lower().encode("latin-1"))


def is_grpc(headers: HeaderList) -> bool:
    ct = get_header(headers, b"content-type")
    return ct is not None and ct.startswith(b"application/grpc")
