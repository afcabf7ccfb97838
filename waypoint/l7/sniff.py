"""Which protocol a connection (or tunnel) speaks, from its first bytes: Envoy's ``http_inspector``.

Pure: the caller peeks, calls :func:`detect_protocol`, and reads more while it answers None.
As Envoy's inspector (``source/extensions/filters/listener/http_inspector``): the HTTP/2 client
preface means ``h2``; a request line ``METHOD SP target SP HTTP/1.x CRLF`` with a known method
means ``http/1.1`` (HTTP/1.0 included); anything else, or nothing decided within
:data:`MAX_INSPECT` bytes, is opaque ``tcp``.
"""

from __future__ import annotations

from typing import Literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_INSPECT = 8192  # Envoy's http_inspector reads at most this many bytes
# llhttp's method names (the parser Envoy's inspector runs on the request line).
METHODS = frozenset(
    {
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"SEARCH",
        b"REPORT",
        b"MKACTIVITY",
        b"CHECKOUT",
        b"MERGE",
        b"M-SEARCH",
        b"NOTIFY",
        b"SUBSCRIBE",
        b"UNSUBSCRIBE",
        b"PURGE",
        b"MKCALENDAR",
        b"LINK",
        b"UNLINK",
        b"BIND",
        b"REBIND",
        b"UNBIND",
        b"ACL",
        b"SOURCE",
        b"QUERY",
    }
)
_LONGEST_METHOD = max(len(m) for m in METHODS)
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

Protocol = Literal["h2", "http/1.1", "tcp"]


def detect_protocol(first_bytes: bytes) -> Protocol | None:
    """``"h2"``, ``"http/1.1"``, ``"tcp"``, or None when more bytes are needed to tell."""
    data = first_bytes[:MAX_INSPECT]
    if not data:
        return None
    if data[:1] == b"P" and PREFACE.startswith(data[: len(PREFACE)]):
        return "h2" if len(data) >= len(PREFACE) else None
    verdict = _http1(data)
    if verdict is None and len(data) >= MAX_INSPECT:
        return "tcp"
    return verdict


def _http1(data: bytes) -> Protocol | None:
    """Checks the request line as far as it has arrived."""
    sp = data.find(b" ", 0, _LONGEST_METHOD + 1)
    if sp < 0:
        if len(data) > _LONGEST_METHOD or not any(m.startswith(data) for m in METHODS):
            return "tcp"
        return None
    if data[:sp] not in METHODS:
        return "tcp"
    eol = data.find(b"\r\n", sp)
    line = data[sp + 1 : eol] if eol >= 0 else data[sp + 1 :]
    target, space, version = line.partition(b" ")
    if any(c <= 0x20 or c == 0x7F for c in target) or (space and not target):
        return "tcp"
    if eol >= 0:
        return "http/1.1" if version in _VERSIONS else "tcp"
    if not space:
        return None  # still in the target
    version = version.removesuffix(b"\r")
    return None if any(v.startswith(version) for v in _VERSIONS) else "tcp"
