"""Is a received HTTP/2 field section well-formed? (RFC 9113 §8.1.1, §8.2, §8.3).

Why it matters here: we forward HTTP/2 messages onto HTTP/1.1 connections, where a CR, LF or
NUL in a value, or a name with a space or colon, splits or smuggles messages (§8.2.1 "Failure
to validate fields can be exploited for request smuggling attacks"). A malformed message is a
*stream* error PROTOCOL_ERROR (§8.1.1): the session resets that stream and the connection goes on.

The session decodes a block once and caches the verdict with it (``h2_hpack.Decoder.remember``),
so these checks run once per distinct block, not per request.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUEST, RESPONSE, TRAILERS = 0, 1, 2

# §8.2.1: names exclude 0x00-0x20, 0x41-0x5a (upper case), 0x7f-0xff; regular names exclude ':'.
_NAME_OK = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
# §8.2.2: connection-specific fields make a message malformed (``te`` unless exactly "trailers").
CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_NO_BODY_STATUS = (204, 304)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the session needs from a field section: ``error`` (None when well-formed), the
    response status (0 for requests and trailers), the declared ``content-length`` (-1: none),
    and the HPACK list size (§6.5.2: name + value + 32 per field)."""

    error: str | None
    status: int = 0
    content_length: int = -1
    size: int = 0
    method: bytes = b""


def check(fields: list[tuple[bytes, bytes]], kind: int) -> Verdict:
    """The verdict on one decoded section of ``kind`` (REQUEST, RESPONSE or TRAILERS)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    content_length = -1
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 32
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            return Verdict(f"forbidden octet in the value of {name!r}")
        if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            return Verdict(f"whitespace around the value of {name!r}")
        if name[:1] == b":":
            if regular:
                return Verdict("pseudo-header after a regular field")
            if name in pseudo or not _pseudo_allowed(name, kind):
                return Verdict(f"pseudo-header {name!r} repeated or not allowed here")
            pseudo[name] = value
            continue
        regular = True
        if not name or name.translate(None, _NAME_OK):
            return Verdict(f"invalid field name {name!r}")
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            return Verdict(f"connection-specific field {name!r}")
        if name == b"content-length":
            n = _content_length(value)
            if n < 0 or (content_length >= 0 and n != content_length):
                return Verdict("invalid content-length")
            content_length = n
    if kind == REQUEST:
        return _request(pseudo, content_length, size)
    if kind == RESPONSE:
        return _response(pseudo, content_length, size)
    return Verdict(None, 0, -1, size)


def _pseudo_allowed(name: bytes, kind: int) -> bool:
    if kind == REQUEST:
        return name in _REQUEST_PSEUDO  # :protocol needs SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)
    return kind == RESPONSE and name == b":status"


def _request(pseudo: dict[bytes, bytes], content_length: int, size: int) -> Verdict:
    """§8.3.1: ``:method`` always; CONNECT carries only ``:authority`` (§8.5); others need a
    ``:scheme`` and a non-empty ``:path``."""
    method = pseudo.get(b":method")
    if not method:
        return Verdict("no :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or not pseudo.get(b":authority"):
            return Verdict("CONNECT needs :authority only")
    elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        return Verdict("no :scheme or :path")
    return Verdict(None, 0, content_length, size, method)


def _response(pseudo: dict[bytes, bytes], content_length: int, size: int) -> Verdict:
    """§8.3.2: exactly one three-digit ``:status``; 101 does not exist in HTTP/2 (§8.6)."""
    raw = pseudo.get(b":status", b"")
    if len(raw) != 3 or not raw.isdigit() or raw == b"101" or raw[:1] == b"0":
        return Verdict("missing or invalid :status")
    status = int(raw)
    if status < 200 or status in _NO_BODY_STATUS:
        content_length = -1  # no body follows, whatever the field says (RFC 9110 §8.6)
    return Verdict(None, status, content_length, size)


def _content_length(value: bytes) -> int:
    """Digits only; a list of identical values (RFC 9110 §8.6) counts as one."""
    if value.isdigit():
        return int(value)
    parts = {p.strip() for p in value.split(b",")}
    if len(parts) == 1:
        (only,) = parts
        if only.isdigit():
            return int(only)
    return -1
