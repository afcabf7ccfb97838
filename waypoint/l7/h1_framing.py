"""HTTP/1.1 message framing that both codecs write: bodies, chunked encoding and trailers.

The request writer (``h1_client``) and the response writer (``h1_response``) frame a body the same
way (RFC 9112 §6 and §7.1): chunked when no ``content-length`` was given and the peer can take
it, as is otherwise; trailers only ride on the last chunk. Heads differ (request line and ``host``
versus status line and ``connection``), so each codec builds its own.
"""

from __future__ import annotations

from waypoint.l7.flow import CorkedWriter
from waypoint.l7.message import HeaderList, get_header, has_header, header_lines

# Responses that never have a body, whatever their headers say (RFC 9110 §6.4.1).
NO_BODY_STATUS = frozenset({204, 304})
LAST_CHUNK = b"0\r\n\r\n"


def write_body(writer: CorkedWriter, chunked: bool, chunk: bytes, end_stream: bool) -> None:
    """Write one piece of a body; with chunked framing an empty piece writes nothing but the end."""
    if chunked:
        if chunk:
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if end_stream:
            writer.write(LAST_CHUNK)
    elif chunk:
        writer.write(chunk)


def write_trailers(writer: CorkedWriter, chunked: bool, trailers: HeaderList) -> None:
    """End a body with trailers; without chunked framing there is nowhere to put them (dropped)."""
    if chunked:
        writer.write(b"0\r\n" + header_lines(trailers) + b"\r\n")


def has_content_length(headers: HeaderList) -> bool:
    return has_header(headers, b"content-length")


def content_length(headers: HeaderList) -> int | None:
    """The ``content-length`` value, or None when absent or not a number."""
    value = get_header(headers, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
