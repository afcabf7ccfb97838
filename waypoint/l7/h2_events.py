"""What an :class:`~waypoint.l7.h2_session.H2Session` reports: facts, frozen, in wire order.

Split from the session so the codecs (``h2_server``, ``h2_client``) and tests can name them
without the state machine; ``waypoint.l7.h2_session`` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """A request (server side) or a final response (client side) head; pseudo-headers included."""

    stream_id: int
    headers: RawHeaders
    end_stream: bool


@dataclass(frozen=True, slots=True)
class InformationalReceived:
    stream_id: int
    headers: RawHeaders


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes (a view over immutable received bytes). Call ``consumed(stream_id, len)`` later."""

    stream_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    """Trailers; the stream's inbound side has ended with them."""

    stream_id: int
    headers: RawHeaders


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer finished sending on this stream (END_STREAM), trailers or not."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone (peer RST_STREAM, or refused by GOAWAY); ``code`` is an HTTP/2 error code."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer granted send window: on ``stream_id``, or on every stream when 0."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """The peer's SETTINGS_MAX_CONCURRENT_STREAMS, after it (re)announced it."""

    max_concurrent_streams: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """GOAWAY received (``code`` 0: drain; streams above ``last_stream_id`` were reset) or a
    connection error on our side (the session is ``dead``)."""

    code: int
    last_stream_id: int


H2Event = (
    HeadersReceived
    | InformationalReceived
    | DataReceived
    | TrailersReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | PeerSettings
    | ConnectionClosed
)
