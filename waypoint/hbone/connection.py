"""HBONE over one HTTP/2 connection, sans-I/O: bytes in, events out, bytes to send drained.

Built on ``h2.H2Connection`` for everything but the hot path: DATA payloads of tunnels are
split out by :mod:`waypoint.hbone.fastpath` on receive and framed here on send, so h2 never sees
a payload byte. Consequently *we* own receive flow control (WINDOW_UPDATE once half a window
is consumed, counted from the consumer's ``consumed`` acks) and GOAWAY (both ways), and debit
h2's outbound windows through :mod:`waypoint.hbone.h2compat`.

Settings follow ztunnel (facts §1.3, ``ZT:src/proxy/h2/{client,server}.rs``): 4 MiB stream
window, 16 MiB connection window (raised with a WINDOW_UPDATE at start), 1 MiB max frame,
server max concurrent streams 100, push disabled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import h2.events as h2e
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from waypoint.hbone import fastpath as fp
from waypoint.hbone import h2compat
from waypoint.hbone.events import (
    ConnectionClosed,
    DataReceived,
    HboneEvent,
    Headers,
    PingAnswered,
    SettingsChanged,
    StreamEnded,
    StreamReset,
    TunnelAnswered,
    TunnelRequested,
    WindowOpened,
)
from waypoint.hbone.headers import check_connect
from waypoint.hbone.output import take_writes

h2compat.quiet_frame_repr()

MiB = 1 << 20
DataSink = Callable[[int, memoryview], None]
_DATA_KINDS = (fp.SEG_PAYLOAD, fp.SEG_DATA_END)
_DEFAULT_WINDOW = 65535


@dataclass(frozen=True, slots=True)
class HboneSettings:
    stream_window: int = 4 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 1 * MiB
    max_concurrent_streams: int = 100
    max_header_list_size: int = 64 * 1024


class _Inbound:
    """Receive-side flow control of one stream: window left, bytes consumed but not yet acked."""

    __slots__ = ("unacked", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0


class HboneConnection:
    """One HBONE HTTP/2 connection, either side. No I/O, no clock."""

    def __init__(self, client_side: bool, settings: HboneSettings | None = None) -> None:
        self.client_side = client_side
        self.settings = s = settings or HboneSettings()
        self._h2 = h2compat.new_h2(
            client_side,
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
                SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
                SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            },
        )
        self._split = fp.FrameSplitter(not client_side, s.max_frame_size)
        self._out: list[bytes | memoryview] = []
        self._recv: dict[int, _Inbound] = {}  # streams whose peer may still send DATA to us
        self._send_open: set[int] = set()  # streams we may still send DATA on
        self._pending: set[int] = set()  # client: CONNECTs awaiting an answer
        self._conn_window = s.connection_window
        self._conn_unacked = 0
        self._cur: _Inbound | None = None  # the DATA frame being received, if delivered
        self._goaway_sent: int | None = None  # last stream id we announced
        self.goaway_received = False
        self.settings_received = False  # the peer's first SETTINGS arrived (its stream cap is known)
        self.dead = False
        self.data_sink: DataSink | None = None
        """Optional ``(stream_id, payload)`` receiver: a payload with no event of the same
        ``receive_data`` call before it and only payloads/DATA ends after it goes straight to it
        instead of becoming a ``DataReceived`` (order and ``is_send_open`` semantics kept). Saves
        an event object and a dispatch per message on the ping-pong path."""
        self._pull()
        if s.connection_window > _DEFAULT_WINDOW:
            self._out.append(fp.window_update(0, s.connection_window - _DEFAULT_WINDOW))

    # --- output -----------------------------------------------------------------------------

    def _pull(self) -> None:
        """Move h2's queued output to ours, keeping wire order with frames we build."""
        data = h2compat.take_pending_output(self._h2)
        if data:
            self._out.append(data)

    def data_to_send(self) -> bytes:
        """Everything to write, joined (one copy of every payload; the asyncio edge uses
        :meth:`take_output` instead)."""
        self._pull()
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)

    def has_output(self) -> bool:
        """Is anything queued to write (h2's own frames included)? Lets the edge skip a flush
        after a read that produced nothing to send: most reads of a tunnel carry only DATA."""
        self._pull()
        return bool(self._out)

    def take_output(self, max_bytes: int = 256 * 1024) -> list[bytes | memoryview]:
        """Up to ``max_bytes`` of what to write, in wire order, as buffers for one
        ``writelines`` (large payloads as views, not copied); the rest stays queued.
        See :func:`waypoint.hbone.output.take_writes`."""
        self._pull()
        return take_writes(self._out, max_bytes)

    # --- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview, owned: bool = False) -> list[HboneEvent]:
        """Feed received bytes. DATA payloads come out as views of ``data``, so it must never
        change afterwards: ``bytes``, or any buffer the caller hands over (``owned``); anything
        else is copied first."""
        if self.dead:
            return []
        if not owned and type(data) is not bytes:
            data = bytes(data)  # payload views must stay valid
        events: list[HboneEvent] = []
        segs = self._split.feed(data)
        direct = _direct_from(segs) if self.data_sink is not None else len(segs)
        for i, seg in enumerate(segs):
            kind = seg[0]
            if kind == fp.SEG_PAYLOAD:
                if self._cur is not None:
                    if i >= direct and not events:
                        self.data_sink(seg[1], seg[2])  # type: ignore[misc]
                    else:
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

    def _data_start(self, sid: int, length: int, events: list[HboneEvent]) -> None:
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
            self._credit_conn(length)  # nobody will consume it: hand the space back now
        else:
            st.window -= length
        self._cur = st

    def _data_end(self, sid: int, end: bool, overhead: int, events: list[HboneEvent]) -> None:
        if self._cur is not None and overhead:
            self.consumed(sid, overhead)  # padding is never delivered: ack it at once
        if end or self._cur is None:
            self._feed_h2(fp.empty_data(sid, end), events)
        self._cur = None

    def _feed_h2(self, data: bytes, events: list[HboneEvent]) -> None:
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(int(exc.error_code), events, h2_sent_goaway=True)
            return
        for ev in h2_events:
            self._translate(ev, events)

    def _translate(self, ev: h2e.Event, events: list[HboneEvent]) -> None:
        if isinstance(ev, h2e.WindowUpdated):
            events.append(WindowOpened(ev.stream_id or 0))
        elif isinstance(ev, h2e.StreamEnded):
            sid = int(ev.stream_id or 0)
            self._recv.pop(sid, None)
            events.append(StreamEnded(sid))
        elif isinstance(ev, h2e.RequestReceived):
            ended = ev.stream_ended is not None
            self._on_request(int(ev.stream_id or 0), _headers(ev.headers), ended, events)
        elif isinstance(ev, h2e.ResponseReceived):
            ended = ev.stream_ended is not None
            self._on_response(int(ev.stream_id or 0), _headers(ev.headers), ended, events)
        elif isinstance(ev, h2e.StreamReset):
            sid = int(ev.stream_id or 0)
            self._forget(sid)
            events.append(StreamReset(sid, int(ev.error_code or 0)))
        elif isinstance(ev, h2e.PingAckReceived):
            events.append(PingAnswered(bytes(ev.ping_data or b"")))
        elif isinstance(ev, h2e.RemoteSettingsChanged):
            self.settings_received = True
            changed = ev.changed_settings
            if SettingCodes.MAX_CONCURRENT_STREAMS in changed:
                value = changed[SettingCodes.MAX_CONCURRENT_STREAMS].new_value
                events.append(SettingsChanged(int(value or 0)))
            if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                events.append(WindowOpened(0))
        # DataReceived (only ever empty here), PingReceived (h2 auto-acks), SettingsAcknowledged,
        # InformationalResponse, TrailersReceived, PriorityUpdated: nothing for a tunnel user.

    def _on_request(self, sid: int, headers: Headers, ended: bool, events: list[HboneEvent]) -> None:
        if self._goaway_sent is not None and sid > self._goaway_sent:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        verdict = check_connect(headers)
        if isinstance(verdict, int):
            if verdict:  # well-formed but not CONNECT: 400, as ztunnel (facts §1.4)
                with contextlib.suppress(h2.exceptions.ProtocolError):  # reset later in the batch
                    self._h2.send_headers(sid, [(":status", str(verdict))], end_stream=True)
                if not ended:
                    self._reset(sid, ErrorCodes.NO_ERROR)
            else:  # malformed (RFC 9113 §8.1.1): a stream error, not a connection error
                self._reset(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        authority, extra = verdict
        if not ended:
            self._recv[sid] = _Inbound(self.settings.stream_window)
        events.append(TunnelRequested(sid, authority, extra))

    def _on_response(self, sid: int, headers: Headers, ended: bool, events: list[HboneEvent]) -> None:
        self._pending.discard(sid)
        status = 0
        for name, value in headers:
            if name == ":status":
                status = int(value) if value.isdigit() else 0
        extra = tuple(h for h in headers if not h[0].startswith(":"))
        if 200 <= status < 300:
            self._send_open.add(sid)
            if not ended:
                self._recv[sid] = _Inbound(self.settings.stream_window)
        else:  # refused: the tunnel never opens; release the stream
            self._forget(sid)
            # h2 reports events after the whole batch: a later frame may have closed it already
            with contextlib.suppress(h2.exceptions.ProtocolError):
                if ended:
                    self._h2.end_stream(sid)
                else:
                    self._h2.reset_stream(sid, ErrorCodes.CANCEL)
        events.append(TunnelAnswered(sid, status, extra))

    def _on_goaway(self, last: int, code: int, events: list[HboneEvent]) -> None:
        self.goaway_received = True
        mine = 1 if self.client_side else 0
        events.append(ConnectionClosed(code, last))
        for sid in sorted(self._recv.keys() | self._send_open | self._pending):
            if sid % 2 == mine and sid > last:
                self._forget(sid)
                events.append(StreamReset(sid, ErrorCodes.REFUSED_STREAM))

    def _fail(self, code: int, events: list[HboneEvent], h2_sent_goaway: bool = False) -> None:
        """A connection error: GOAWAY with ``code``, every stream gone."""
        last = h2compat.highest_inbound_stream_id(self._h2)
        if not h2_sent_goaway and not h2compat.is_closed(self._h2):
            self._pull()
            self._out.append(fp.goaway(last, code))
        self.dead = True
        self._recv.clear()
        self._send_open.clear()
        self._pending.clear()
        events.append(ConnectionClosed(code, last))

    # --- flow control -------------------------------------------------------------------------

    def _credit_conn(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self.settings.connection_window >> 1:
            self._pull()
            self._out.append(fp.window_update(0, self._conn_unacked))
            self._conn_window += self._conn_unacked
            self._conn_unacked = 0

    def consumed(self, stream_id: int, n: int) -> None:
        """The consumer processed ``n`` delivered bytes: the peer may send that much more once
        half a window has accumulated (stream and connection counted separately)."""
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

    def is_send_open(self, stream_id: int) -> bool:
        """May we still send DATA on this stream? False once we ended it, and as soon as a reset,
        a GOAWAY or a connection error is *read*, before the batch's events are handed out."""
        return stream_id in self._send_open

    def outbound_window(self, stream_id: int) -> int:
        """Bytes ``send`` would frame right now on this stream (0 when it cannot send)."""
        if stream_id not in self._send_open:
            return 0
        return h2compat.send_window(self._h2, stream_id)

    # --- actions ------------------------------------------------------------------------------

    def open_tunnel(self, authority: str, headers: Headers = ()) -> int:
        """Client: send an ordinary CONNECT (only ``:method`` and ``:authority`` pseudo-headers,
        as ztunnel's h2 crate and Envoy send it, envoy-peer.md "What Envoy puts on the wire")."""
        if self.client_side is False or self.goaway_received or self.dead:
            raise h2.exceptions.ProtocolError("connection cannot open new tunnels")
        sid = int(self._h2.get_next_available_stream_id())
        self._h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers])
        self._pending.add(sid)
        return sid

    def accept(self, stream_id: int, headers: Headers = ()) -> None:
        """Server: answer 200; the tunnel is open both ways."""
        self._h2.send_headers(stream_id, [(":status", "200"), *headers])
        self._send_open.add(stream_id)

    def reject(self, stream_id: int, status: int, headers: Headers = ()) -> None:
        """Server: answer ``status`` with END_STREAM (ztunnel's error answers, facts §1.4); if the
        client has not finished, RST_STREAM(NO_ERROR) tells it to stop sending (RFC 9113 §8.1)."""
        self._h2.send_headers(stream_id, [(":status", str(status)), *headers], end_stream=True)
        if self._recv.pop(stream_id, None) is not None:
            self._reset(stream_id, ErrorCodes.NO_ERROR)

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Frame as much of ``data`` as the peer's windows allow; return how much. The caller
        buffers the rest until ``WindowOpened``. ``data`` must not change until the next
        ``data_to_send`` (views of it are queued)."""
        if stream_id not in self._send_open:
            raise ValueError(f"stream {stream_id} is not open for sending")
        n = min(len(data), h2compat.send_window(self._h2, stream_id))
        if n <= 0:
            return 0
        self._pull()
        out = self._out
        max_frame = self._h2.max_outbound_frame_size
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
        """Half-close our direction (END_STREAM); the peer's direction keeps flowing. A no-op on a
        stream we cannot send on any more (ended, reset, refused by GOAWAY, connection failed):
        the peer's RST_STREAM may sit in the same read as its END_STREAM, so h2 has closed the
        stream by the time our consumer hears the EOF and closes in turn."""
        if stream_id not in self._send_open:
            return
        self._send_open.discard(stream_id)
        self._pull()
        self._h2.end_stream(stream_id)

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self._reset(stream_id, code)

    def _reset(self, sid: int, code: int) -> None:
        self._forget(sid)
        self._pull()
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 forgot it: nothing to reset
            self._h2.reset_stream(sid, code)

    def _forget(self, sid: int) -> None:
        self._recv.pop(sid, None)
        self._send_open.discard(sid)
        self._pending.discard(sid)

    def ping(self, opaque: bytes) -> None:
        self._pull()
        self._h2.ping(opaque)

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
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unbounded until it says otherwise)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def closing(self) -> bool:
        return self.dead or self.goaway_received or self._goaway_sent is not None


def _direct_from(segs: list[tuple]) -> int:  # type: ignore[type-arg]
    """The first segment index after which only payloads and DATA ends follow: payloads from
    there on may go to the ``data_sink`` at once, since no reset, GOAWAY or error later in the
    read can change what the consumer should see before it (``is_send_open`` turns False as
    soon as such a frame is *read*, before any delivery of the same read)."""
    i = len(segs)
    while i and segs[i - 1][0] in _DATA_KINDS:
        i -= 1
    return i


def _headers(raw: object) -> Headers:
    return tuple((str(k), str(v)) for k, v in raw)  # type: ignore[attr-defined]
