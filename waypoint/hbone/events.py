"""What an HBONE connection reports: frozen dataclasses named as facts (h2's ``events.py`` style).

``HboneConnection.receive_data`` returns a list of these; the asyncio adapter turns them into
``asyncio.Protocol`` callbacks. ``DataReceived.data`` is a ``memoryview`` over the received
``bytes`` (zero copy): hold it as long as you like, the bytes underneath are immutable.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TunnelRequested:
    """Server side: a well-formed ordinary CONNECT arrived. ``authority`` is unparsed."""

    stream_id: int
    authority: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class TunnelAnswered:
    """Client side: the server answered our CONNECT. Only 2xx opens the tunnel."""

    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Tunnel payload. Call ``consumed(stream_id, len(data))`` once it is processed."""

    stream_id: int
    data: memoryview | bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the tunnel (END_STREAM); our direction may keep sending."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The tunnel is gone (RST_STREAM from the peer, or refused by a GOAWAY)."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer opened its receive window: buffered sends may go. 0 means every stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The peer changed SETTINGS_MAX_CONCURRENT_STREAMS (the pool's cap follows it)."""

    max_concurrent_streams: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """GOAWAY sent or received, or a protocol error. Streams up to ``last_stream_id`` may finish
    when ``code`` is 0; with any other code the connection is dead."""

    code: int
    last_stream_id: int


HboneEvent = (
    TunnelRequested
    | TunnelAnswered
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | PingAnswered
    | SettingsChanged
    | ConnectionClosed
)
