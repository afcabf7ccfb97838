"""HTTP/2 requests and responses over one connection, sans-I/O: bytes in, events out, bytes drained.

The L7 codecs (``h2_server``, ``h2_client``) share this. It is our own HTTP/2 endpoint (RFC 9113)
for the request/response use, with no ``h2`` underneath: ``h2``'s receive path (frame objects,
HPACK, stream bookkeeping) was ~28% of the waypoint's CPU in the h2c bench (envoy-peer.md item 6
names the same costs). ``h2_reader`` cuts frames (DATA payloads stay views of the received
bytes), ``h2_hpack`` decodes header blocks (whole blocks cached while its table is unchanged),
``h2_fields`` judges them, and this class applies what arrives to the stream table and windows
that ``h2_state.SessionState`` keeps (with the send side): stream states (§5.1), flow control
(§5.2, §6.9), SETTINGS (§6.5), PING, RST_STREAM and GOAWAY.

Errors follow RFC 9113 §5.4: a *stream* error resets one stream (RST_STREAM; a consumer that knew
the stream gets :class:`StreamReset`), a *connection* error sends GOAWAY and the session is
``dead`` (:class:`ConnectionClosed`). ``tests/l7h2/test_conformance.py`` is the table of which is which.

We own receive flow control: the consumer calls :meth:`H2Session.consumed` once the chain has
taken the bytes, and a WINDOW_UPDATE leaves once half a window is consumed (pause = don't call it).
Headers stay bytes end to end, as :mod:`waypoint.l7.message` holds them.
"""

from __future__ import annotations

import struct
from collections import deque

from waypoint.l7 import h2_fast as w
from waypoint.l7 import h2_fields
from waypoint.l7.h2_events import (
    ConnectionClosed,
    DataReceived,
    H2Event,
    HeadersReceived,
    InformationalReceived,
    PeerSettings,
    RawHeaders,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from waypoint.l7.h2_hpack import Decoder, HpackError
from waypoint.l7.h2_reader import SEG_DATA_END, SEG_DATA_START, SEG_FRAME, SEG_HEADERS, SEG_PAYLOAD, FrameReader
from waypoint.l7.h2_state import H2ProtocolError, H2Settings, KiB, MiB, SessionState
from waypoint.l7.h2_stream import H2Stream

__all__ = [
    "ConnectionClosed", "DataReceived", "H2Event", "H2ProtocolError", "H2Session", "H2Settings",
    "HeadersReceived", "InformationalReceived", "KiB", "MiB", "PeerSettings", "RawHeaders", "StreamEnded",
    "StreamReset", "TrailersReceived", "WindowOpened",
]  # fmt: skip

_SETTING = struct.Struct(">HL")


class H2Session(SessionState):
    """One HTTP/2 connection carrying requests, either side. No I/O, no clock."""

    def __init__(self, client_side: bool, settings: H2Settings | None = None) -> None:
        super().__init__(client_side, settings)
        s = self.settings
        self._reader = FrameReader(not client_side, s.max_frame_size, s.max_header_list_size)
        self._decoder = Decoder()
        self._cur: H2Stream | None = None  # the DATA frame being received, if it is delivered

    # ---- input ----
    def receive_data(self, data: bytes) -> list[H2Event]:
        if self.dead:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # payload views must stay valid: immutable bytes only
        events: list[H2Event] = []
        for seg in self._reader.feed(data):
            kind = seg[0]
            if kind == SEG_PAYLOAD:
                if self._cur is not None:
                    events.append(DataReceived(seg[1], seg[2]))
            elif kind == SEG_HEADERS:
                self._on_headers(seg[1], seg[2], seg[3], seg[4], events)
            elif kind == SEG_DATA_START:
                self._data_start(seg[1], seg[2], seg[3], seg[4], events)
            elif kind == SEG_DATA_END:
                self._data_end(seg[1], seg[2], seg[3], events)
            elif kind == SEG_FRAME:
                self._on_frame(seg[1], seg[2], seg[3], seg[4], events)
            else:
                self._fail(seg[1], events, seg[2])
            if self.dead:
                break
        return events

    # ---- DATA (§6.1) ----
    def _data_start(self, sid: int, length: int, end: bool, body: int, events: list[H2Event]) -> None:
        self._cur = None
        if length > self._conn_window:
            self._fail(w.FLOW_CONTROL_ERROR, events, "DATA beyond the connection window")
            return
        self._conn_window -= length
        st = self._streams.get(sid)
        if st is None or not st.remote_open:
            if st is None and self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, events, "DATA on an idle stream")
                return
            self._credit_conn(length)  # nobody will consume it: give the space back now
            if sid not in self._reset_by_us:
                self._stream_error(sid, w.STREAM_CLOSED, events)
            return
        if not st.final_head:
            code = w.PROTOCOL_ERROR  # DATA before the final response head (§8.1)
        elif length > st.recv_window:
            code = w.FLOW_CONTROL_ERROR  # a stream error only (§6.9)
        elif st.expect >= 0 and st.received + body > st.expect:
            code = w.PROTOCOL_ERROR  # more body than content-length (§8.1.1); never forwarded
        else:
            st.received += body
            st.recv_window -= length
            self._cur = st
            return
        self._credit_conn(length)
        self._stream_error(sid, code, events)

    def _data_end(self, sid: int, end: bool, overhead: int, events: list[H2Event]) -> None:
        st = self._cur
        self._cur = None
        if st is None:
            return
        if overhead:
            self.consumed(sid, overhead)  # padding is never delivered
        if end:
            self._remote_end(st, events)

    def _remote_end(self, st: H2Stream, events: list[H2Event]) -> None:
        if st.expect >= 0 and st.received != st.expect:
            self._stream_error(st.sid, w.PROTOCOL_ERROR, events)  # body shorter than content-length
            return
        st.remote_open = False
        events.append(StreamEnded(st.sid))
        if not st.local_open:
            self._remove(st)

    # ---- HEADERS (§6.2, §8.1) ----
    def _on_headers(self, sid: int, end: bool, block: bytes, self_dep: bool, events: list[H2Event]) -> None:
        st = self._streams.get(sid)
        if st is not None:
            kind = h2_fields.TRAILERS if st.final_head else h2_fields.RESPONSE
        elif sid & 1 == self._mine:  # one we opened and closed, or never opened
            if self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, events, "HEADERS on a stream we never opened")
                return
            kind = -1
        elif self.client_side:
            self._fail(w.PROTOCOL_ERROR, events, "HEADERS on a server-initiated stream (push is off)")
            return
        elif sid <= self._last_inbound:
            kind = -1  # closed: ids only grow (§5.1.1)
        else:
            kind = h2_fields.REQUEST
            self._last_inbound = sid
        decoded = self._decode(block, kind if kind >= 0 else h2_fields.TRAILERS, events)
        if decoded is None:
            return
        fields, verdict = decoded
        if kind < 0:
            if sid not in self._reset_by_us:  # §5.1 "closed": frames after END_STREAM both ways
                self._fail(w.STREAM_CLOSED, events, "HEADERS on a closed stream")
            return
        if st is None:
            self._open_inbound(sid, end, fields, verdict, self_dep, events)
        elif not st.remote_open:
            self._stream_error(sid, w.STREAM_CLOSED, events)  # §5.1 "half-closed (remote)"
        elif verdict.error is not None or self_dep or verdict.size > self.settings.max_header_list_size:
            self._stream_error(sid, w.PROTOCOL_ERROR, events)
        elif kind == h2_fields.TRAILERS:
            if not end:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)  # trailers must end the stream
            elif st.expect >= 0 and st.received != st.expect:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
            else:
                events.append(TrailersReceived(sid, list(fields)))
                self._remote_end(st, events)
        elif verdict.status < 200:  # client side: 1xx, never with END_STREAM (§8.1)
            if end:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
            else:
                events.append(InformationalReceived(sid, list(fields)))
        else:
            st.final_head = True
            st.expect = -1 if st.head_request else verdict.content_length
            if end and st.expect > 0:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
                return
            events.append(HeadersReceived(sid, list(fields), end))
            if end:
                self._remote_end(st, events)

    def _open_inbound(
        self, sid: int, end: bool, fields: RawHeaders, verdict: h2_fields.Verdict, self_dep: bool, events: list[H2Event]
    ) -> None:
        """A request on a new stream, or REFUSED_STREAM / PROTOCOL_ERROR for that stream only."""
        if self._goaway_sent is not None and sid > self._goaway_sent:
            self._refuse(sid, w.REFUSED_STREAM)  # §6.8: not processed, safe to retry
        elif self._inbound >= self.settings.max_concurrent_streams:
            self._refuse(sid, w.REFUSED_STREAM)  # §5.1.2
        elif verdict.error is not None or self_dep or verdict.size > self.settings.max_header_list_size:
            self._refuse(sid, w.PROTOCOL_ERROR)  # malformed (§8.1.1), or priority on itself (§5.3.1)
        elif end and verdict.content_length > 0:
            self._refuse(sid, w.PROTOCOL_ERROR)
        else:
            st = H2Stream(sid, self.settings.stream_window, self._peer_initial, verdict.content_length)
            self._streams[sid] = st
            self._inbound += 1
            events.append(HeadersReceived(sid, list(fields), end))
            if end:
                self._remote_end(st, events)

    def _decode(self, block: bytes, kind: int, events: list[H2Event]) -> tuple[RawHeaders, h2_fields.Verdict] | None:
        """Fields and verdict; a block seen since the table last changed costs one lookup."""
        hit = self._decoder.cached(block)
        if hit is not None:
            fields, note = hit
            if note[0] == kind:  # type: ignore[index]
                return fields, note[1]  # type: ignore[index]
        else:
            try:
                fields, untouched = self._decoder.decode(block)
            except HpackError as exc:
                self._fail(w.COMPRESSION_ERROR, events, str(exc))  # §4.3: state is lost
                return None
            if not untouched:
                return fields, h2_fields.check(fields, kind)
        verdict = h2_fields.check(fields, kind)
        self._decoder.remember(block, fields, (kind, verdict))
        return fields, verdict

    # ---- control frames ----
    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes, events: list[H2Event]) -> None:
        if ftype == w.WINDOW_UPDATE:
            self._on_window_update(sid, payload, events)
        elif ftype == w.SETTINGS:
            self._on_settings(sid, flags, payload, events)
        elif ftype == w.RST_STREAM:
            if len(payload) != 4 or not sid:
                self._fail(w.FRAME_SIZE_ERROR if sid else w.PROTOCOL_ERROR, events, "bad RST_STREAM")
            elif self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, events, "RST_STREAM on an idle stream")
            else:
                st = self._streams.get(sid)
                if st is not None:  # on a closed stream: ignored
                    self._remove(st)
                    events.append(StreamReset(sid, int.from_bytes(payload, "big")))
        elif ftype == w.PING:
            if sid or len(payload) != 8:
                self._fail(w.PROTOCOL_ERROR if sid else w.FRAME_SIZE_ERROR, events, "bad PING")
            elif not flags & w.ACK:
                self._out.append(w.ping_ack(payload))
        elif ftype == w.GOAWAY:
            if sid or len(payload) < 8:
                self._fail(w.PROTOCOL_ERROR if sid else w.FRAME_SIZE_ERROR, events, "bad GOAWAY")
            else:
                last, code = struct.unpack_from(">LL", payload)
                self._on_goaway(last & 0x7FFFFFFF, code, events)
        elif ftype == w.PRIORITY:  # otherwise ignored: RFC 9113 deprecates the priority scheme (§5.3.2)
            code = w.FRAME_SIZE_ERROR if len(payload) != 5 else 0  # §6.3
            if not code and int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                code = w.PROTOCOL_ERROR  # depends on itself (§5.3.1)
            if not sid:
                self._fail(w.PROTOCOL_ERROR, events, "PRIORITY on stream 0")
            elif code and self._idle(sid):  # no RST_STREAM may name an idle stream (§6.4)
                self._fail(code, events, "invalid PRIORITY on an idle stream")
            elif code:
                self._stream_error(sid, code, events)
        # unknown frame types are ignored (§5.5)

    def _on_window_update(self, sid: int, payload: bytes, events: list[H2Event]) -> None:
        """§6.9: zero increments and windows beyond 2^31-1 are errors of the window's scope."""
        if len(payload) != 4:
            self._fail(w.FRAME_SIZE_ERROR, events, "bad WINDOW_UPDATE")
            return
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not inc or self._send_conn + inc > w.MAX_WINDOW:
                self._fail(w.FLOW_CONTROL_ERROR if inc else w.PROTOCOL_ERROR, events, "bad connection increment")
                return
            self._send_conn += inc
            events.append(WindowOpened(0))
            return
        st = self._streams.get(sid)
        if st is None:
            if self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, events, "WINDOW_UPDATE on an idle stream")
            return  # closed: frames in flight are fine (§6.9)
        if not inc or st.send_window + inc > w.MAX_WINDOW:
            self._stream_error(sid, w.FLOW_CONTROL_ERROR if inc else w.PROTOCOL_ERROR, events)
            return
        st.send_window += inc
        events.append(WindowOpened(sid))

    def _on_settings(self, sid: int, flags: int, payload: bytes, events: list[H2Event]) -> None:
        """§6.5: apply in order, then acknowledge; ACKs carry nothing."""
        if sid:
            self._fail(w.PROTOCOL_ERROR, events, "SETTINGS on a stream")
            return
        if flags & w.ACK or len(payload) % 6:
            if payload:
                self._fail(w.FRAME_SIZE_ERROR, events, "bad SETTINGS length")
            return
        max_streams = -1
        initial = self._peer_initial
        for off in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, off)
            error = self._apply_setting(key, value)
            if error is not None:
                self._fail(error[0], events, error[1])
                return
            if key == w.MAX_CONCURRENT_STREAMS:
                max_streams = value
        self._out.append(w.SETTINGS_ACK)
        if max_streams >= 0:
            events.append(PeerSettings(max_streams))
        if self._peer_initial > initial:
            events.append(WindowOpened(0))

    def _apply_setting(self, key: int, value: int) -> tuple[int, str] | None:
        if key == w.HEADER_TABLE_SIZE:
            self._encoder.header_table_size = value
        elif key == w.ENABLE_PUSH or key == w.ENABLE_CONNECT_PROTOCOL:
            if value > 1 or (key == w.ENABLE_PUSH and value and self.client_side):
                return w.PROTOCOL_ERROR, "bad ENABLE_PUSH / ENABLE_CONNECT_PROTOCOL"
        elif key == w.MAX_CONCURRENT_STREAMS:
            self._peer_max_streams = value
        elif key == w.INITIAL_WINDOW_SIZE:
            if value > w.MAX_WINDOW:
                return w.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1"
            delta = value - self._peer_initial
            self._peer_initial = value
            for st in self._streams.values():  # §6.9.2: every open stream's window moves
                st.send_window += delta
                if st.send_window > w.MAX_WINDOW:
                    return w.FLOW_CONTROL_ERROR, "a stream window above 2^31-1"
        elif key == w.MAX_FRAME_SIZE:
            if not w.DEFAULT_MAX_FRAME <= value <= w.MAX_FRAME_LIMIT:
                return w.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range"
            self._peer_max_frame = value
        return None

    def _on_goaway(self, last: int, code: int, events: list[H2Event]) -> None:
        """Streams we opened above ``last`` were never processed: reset them (retriable)."""
        self.goaway_received = True
        events.append(ConnectionClosed(code, last))
        for sid in sorted(self._streams):
            if sid & 1 == self._mine and sid > last:
                self._remove(self._streams[sid])
                events.append(StreamReset(sid, w.REFUSED_STREAM))


def send_or_queue(session: H2Session, stream_id: int, chunk: bytes, out: deque[bytes | memoryview]) -> int:
    """Send a body chunk now as far as the windows allow, behind anything already queued; the rest
    joins ``out``. Returns the bytes queued (both codecs keep the count for their pause mark)."""
    if out:
        out.append(chunk)
        return len(chunk)
    n = session.send_data(stream_id, chunk)
    if n < len(chunk):
        out.append(memoryview(chunk)[n:])
    return len(chunk) - n


def send_queued(session: H2Session, stream_id: int, out: deque[bytes | memoryview]) -> int:
    """Send a stream's queued body chunks as far as the peer's windows allow; what does not fit
    stays at the head of ``out``. Returns the bytes sent (both codecs keep a queued-bytes count)."""
    sent = 0
    while out:
        chunk = out[0]
        n = session.send_data(stream_id, chunk)
        sent += n
        if n < len(chunk):
            out[0] = memoryview(chunk)[n:]
            break
        out.popleft()
    return sent
