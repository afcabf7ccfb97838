"""HTTP/2 requests and responses over one connection, sans-I/O: bytes in, events out, bytes drained.

The L7 codecs (``h2_server``, ``h2_client``) share this. It is built like
``waypoint.hbone.connection`` and reuses its pieces (imported, not copied): ``hbone.fastpath``
splits DATA payloads out of the inbound byte stream so ``h2`` never copies or inspects a payload
byte, DATA we send is framed by hand, and ``hbone.h2compat`` silences h2's per-frame ``repr``
(19% of CPU, envoy-peer.md item 6) and debits h2's outbound windows. So *we* own receive flow
control: the consumer calls :meth:`H2Session.consumed` once the chain has taken the bytes, and a
WINDOW_UPDATE leaves once half a window is consumed (pause = don't call ``consumed``).

Headers stay bytes end to end (``header_encoding=None``), as :mod:`waypoint.l7.message` holds them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import h2.events as h2e
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from waypoint.hbone import fastpath as fp
from waypoint.hbone import h2compat
from waypoint.l7 import h2_fast
from waypoint.l7.hpack_encode import StaticEncoder

h2compat.quiet_frame_repr()

KiB, MiB = 1 << 10, 1 << 20
_DEFAULT_WINDOW = 65535
RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class H2Settings:
    """Our SETTINGS. Envoy as an HTTP/2 server advertises 1024 concurrent streams (envoy-peer.md,
    "What Envoy puts on the wire"); windows are smaller than Envoy's so a stalled peer pins at most
    ``stream_window`` per stream and ``connection_window`` per connection in our memory."""

    stream_window: int = 1 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 64 * KiB
    max_concurrent_streams: int = 1024
    max_header_list_size: int = 64 * KiB


# ---- events: facts, in wire order ----
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


class _Inbound:
    """Receive flow control of one stream: window left, bytes consumed but not yet granted back."""

    __slots__ = ("unacked", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0


def _new_h2(client_side: bool, s: H2Settings) -> H2Connection:
    """Validation off both ways: the codecs check pseudo-headers themselves so a malformed request
    ends its stream only (h2 would GOAWAY), and message heads are already lower-case, hop-by-hop free.
    (``h2compat.new_h2`` forces ``header_encoding="utf-8"``; we keep bytes.)"""
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = H2Connection(config=config)
    conn.encoder = StaticEncoder()  # type: ignore[assignment]
    conn.local_settings = Settings(
        client=client_side,
        initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
            SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        },
    )
    conn.initiate_connection()
    return conn


def forget_content_length(conn: H2Connection, stream_id: int) -> None:
    """Stop h2 checking the body against ``content-length``: it never sees our DATA payloads (only
    the empty END_STREAM frame), so it would count 0 and raise a *connection* error. Reaches into
    ``H2Stream._expected_content_length`` (h2 4.4.1; contract test in ``tests/l7h2/test_session.py``)."""
    stream = conn.streams.get(stream_id)
    if stream is not None:
        stream._expected_content_length = None


class H2Session:
    """One HTTP/2 connection carrying requests, either side. No I/O, no clock."""

    def __init__(self, client_side: bool, settings: H2Settings | None = None) -> None:
        self.client_side = client_side
        self.settings = s = settings or H2Settings()
        self._h2 = _new_h2(client_side, s)
        self._split = fp.FrameSplitter(not client_side, s.max_frame_size)
        self._out: list[bytes | memoryview] = []
        self._recv: dict[int, _Inbound] = {}  # streams the peer may still send DATA on
        self._conn_window = s.connection_window
        self._conn_unacked = 0
        self._cur: _Inbound | None = None  # the DATA frame being received, if it is delivered
        self._goaway_sent: int | None = None
        self.goaway_received = False
        self.dead = False
        self._pull()
        if s.connection_window > _DEFAULT_WINDOW:
            self._out.append(fp.window_update(0, s.connection_window - _DEFAULT_WINDOW))

    # ---- output ----
    def _pull(self) -> None:
        """Move h2's queued output to ours, keeping wire order with the frames we build."""
        data = self._h2.data_to_send()
        if data:
            self._out.append(data)

    def data_to_send(self) -> bytes:
        self._pull()
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)

    # ---- input ----
    def receive_data(self, data: bytes) -> list[H2Event]:
        if self.dead:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # payload views must stay valid: immutable bytes only
        events: list[H2Event] = []
        for seg in self._split.feed(data):
            kind = seg[0]
            if kind == fp.SEG_PAYLOAD:
                if self._cur is not None:
                    events.append(DataReceived(seg[1], seg[2]))
            elif kind == fp.SEG_DATA_START:
                self._data_start(seg[1], seg[2], events)
            elif kind == fp.SEG_DATA_END:
                self._data_end(seg[1], seg[2], seg[3], events)
            elif kind == fp.SEG_H2:
                self._feed_h2(seg[1], events)
            elif kind == fp.SEG_GOAWAY:
                self._on_goaway(seg[1], seg[2], events)
            else:
                self._fail(seg[1], events)
            if self.dead:
                break
        return events

    def _data_start(self, sid: int, length: int, events: list[H2Event]) -> None:
        if length > self._conn_window:
            self._fail(fp.FLOW_CONTROL_ERROR, events)
            return
        self._conn_window -= length
        st = self._recv.get(sid)
        if st is not None and length > st.window:  # a stream error only (RFC 9113 §6.9)
            self._reset(sid, fp.FLOW_CONTROL_ERROR)
            events.append(StreamReset(sid, fp.FLOW_CONTROL_ERROR))
            st = None
        if st is None:
            self._credit_conn(length)  # nobody will consume it: give the space back now
        else:
            st.window -= length
        self._cur = st

    def _data_end(self, sid: int, end: bool, overhead: int, events: list[H2Event]) -> None:
        if self._cur is not None and overhead:
            self.consumed(sid, overhead)  # padding is never delivered
        if end or self._cur is None:
            self._feed_h2(fp.empty_data(sid, end), events)  # h2 tracks END_STREAM (or resets)
        self._cur = None

    def _feed_h2(self, data: bytes, events: list[H2Event]) -> None:
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(int(exc.error_code), events, h2_sent_goaway=True)
            return
        for ev in h2_events:
            self._translate(ev, events)

    def _translate(self, ev: h2e.Event, events: list[H2Event]) -> None:
        if isinstance(ev, h2e.StreamEnded):
            sid = int(ev.stream_id or 0)
            self._recv.pop(sid, None)
            events.append(StreamEnded(sid))
        elif isinstance(ev, (h2e.RequestReceived, h2e.ResponseReceived)):
            sid = int(ev.stream_id or 0)
            ended = ev.stream_ended is not None
            if isinstance(ev, h2e.RequestReceived) and self._goaway_sent is not None and sid > self._goaway_sent:
                self._reset(sid, ErrorCodes.REFUSED_STREAM)
                return
            if not ended:
                self._recv[sid] = _Inbound(self.settings.stream_window)
                forget_content_length(self._h2, sid)
            events.append(HeadersReceived(sid, list(ev.headers or ()), ended))  # type: ignore[arg-type]
        elif isinstance(ev, h2e.WindowUpdated):
            events.append(WindowOpened(ev.stream_id or 0))
        elif isinstance(ev, h2e.TrailersReceived):
            events.append(TrailersReceived(int(ev.stream_id or 0), list(ev.headers or ())))  # type: ignore[arg-type]
        elif isinstance(ev, h2e.InformationalResponseReceived):
            events.append(InformationalReceived(int(ev.stream_id or 0), list(ev.headers or ())))  # type: ignore[arg-type]
        elif isinstance(ev, h2e.StreamReset):
            sid = int(ev.stream_id or 0)
            self._recv.pop(sid, None)
            events.append(StreamReset(sid, int(ev.error_code or 0)))
        elif isinstance(ev, h2e.RemoteSettingsChanged):
            changed = ev.changed_settings
            if SettingCodes.MAX_CONCURRENT_STREAMS in changed:
                events.append(PeerSettings(int(changed[SettingCodes.MAX_CONCURRENT_STREAMS].new_value or 0)))
            if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                events.append(WindowOpened(0))
        # DataReceived (always empty here), PingReceived (h2 answers), SettingsAcknowledged,
        # PriorityUpdated: nothing for a request/response user.

    def _on_goaway(self, last: int, code: int, events: list[H2Event]) -> None:
        """Streams we opened above ``last`` were never processed: reset them (retriable)."""
        self.goaway_received = True
        events.append(ConnectionClosed(code, last))
        mine = 1 if self.client_side else 0
        for sid in sorted(self._open_streams()):
            if sid % 2 == mine and sid > last:
                self._recv.pop(sid, None)
                events.append(StreamReset(sid, ErrorCodes.REFUSED_STREAM))

    def _open_streams(self) -> set[int]:
        return {sid for sid, st in self._h2.streams.items() if not st.closed}

    def _fail(self, code: int, events: list[H2Event], h2_sent_goaway: bool = False) -> None:
        """A connection error: GOAWAY with ``code``; every stream is gone."""
        last = h2compat.highest_inbound_stream_id(self._h2)
        if not h2_sent_goaway and not h2compat.is_closed(self._h2):
            self._pull()
            self._out.append(fp.goaway(last, code))
        self.dead = True
        self._recv.clear()
        events.append(ConnectionClosed(code, last))

    # ---- receive flow control ----
    def _credit_conn(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self.settings.connection_window >> 1:
            self._pull()
            self._out.append(fp.window_update(0, self._conn_unacked))
            self._conn_window += self._conn_unacked
            self._conn_unacked = 0

    def consumed(self, stream_id: int, n: int) -> None:
        """The consumer took ``n`` delivered bytes: grant them back once half a window accumulates."""
        if n <= 0 or self.dead:
            return
        self._credit_conn(n)
        st = self._recv.get(stream_id)
        if st is not None:
            st.unacked += n
            if st.unacked >= self.settings.stream_window >> 1:
                self._pull()
                self._out.append(fp.window_update(stream_id, st.unacked))
                st.window += st.unacked
                st.unacked = 0

    # ---- actions ----
    def open_stream(self, headers: RawHeaders, end_stream: bool) -> int:
        """Client: send a request head on a new stream; raises ``h2.exceptions.ProtocolError``
        when the connection cannot take one (GOAWAY, stream ids exhausted, peer's limit)."""
        if self.goaway_received or self.dead or self._goaway_sent is not None:
            raise h2.exceptions.ProtocolError("connection is closing")
        sid = int(self._h2.get_next_available_stream_id())
        self._pull()
        self._h2.send_headers(sid, headers, end_stream=end_stream)
        return sid

    def send_headers(self, stream_id: int, headers: RawHeaders, end_stream: bool) -> None:
        """A response head, an informational head, or trailers (``end_stream`` True)."""
        self._pull()
        self._out.append(h2_fast.send_headers(self._h2, stream_id, headers, end_stream))

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Frame as much of ``data`` as the peer's windows allow; return how much. The caller keeps
        the rest until ``WindowOpened``. ``data`` must not change until ``data_to_send``."""
        n = min(len(data), h2compat.send_window(self._h2, stream_id))
        if n <= 0:
            return 0
        self._pull()
        out = self._out
        max_frame = self._h2.max_outbound_frame_size
        if n <= max_frame:
            out.append(fp.data_header(n, stream_id))
            out.append(data if n == len(data) else memoryview(data)[:n])
        else:
            view = memoryview(data)
            off = 0
            while off < n:
                k = min(max_frame, n - off)
                out.append(fp.data_header(k, stream_id))
                out.append(view[off : off + k])
                off += k
        h2compat.debit_send_window(self._h2, stream_id, n)
        return n

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM on our side (an empty DATA frame, through h2 so its state machine knows)."""
        self._pull()
        self._out.append(h2_fast.end_stream(self._h2, stream_id))

    def send_window(self, stream_id: int) -> int:
        return h2compat.send_window(self._h2, stream_id)

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self._reset(stream_id, code)

    def _reset(self, sid: int, code: int) -> None:
        self._recv.pop(sid, None)
        self._pull()
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 already forgot it
            self._h2.reset_stream(sid, code)

    def close(self, code: int = 0) -> None:
        """GOAWAY: no new streams; with code 0 the open ones may finish (graceful drain)."""
        if self.dead or self._goaway_sent is not None:
            return
        last = h2compat.highest_inbound_stream_id(self._h2)
        self._goaway_sent = last
        self._pull()
        self._out.append(fp.goaway(last, code))
        if code:
            self.dead = True

    @property
    def max_outbound_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (h2's default until it says otherwise)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def closing(self) -> bool:
        return self.dead or self.goaway_received or self._goaway_sent is not None
