"""The state of one HTTP/2 connection and everything *we* send on it (RFC 9113), sans-I/O.

:class:`~waypoint.l7.h2_session.H2Session` adds the receive side on top. Split so that each
half reads on its own: here the stream table (§5.1), the windows (§5.2, §6.9), our SETTINGS,
stream and connection errors (§5.4: RST_STREAM, GOAWAY) and the actions a codec takes (open a
stream, send a head, DATA, END_STREAM, a reset, a GOAWAY). Frames are laid out by ``h2_fast``,
header blocks by ``hpack_encode.StaticEncoder``.
"""

from __future__ import annotations

from dataclasses import dataclass

from waypoint.l7 import h2_fast as w
from waypoint.l7.h2_events import ConnectionClosed, H2Event, RawHeaders, StreamReset
from waypoint.l7.h2_stream import H2Stream
from waypoint.l7.hpack_encode import StaticEncoder

KiB, MiB = 1 << 10, 1 << 20
RESET_MEMORY = 1024  # streams we reset, whose in-flight frames are dropped quietly (§5.4.2)


class H2ProtocolError(Exception):
    """An action the protocol does not allow now (closed stream, closing connection, peer's limit)."""


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


class SessionState:
    """Stream table, windows and the send side; no I/O, no clock."""

    def __init__(self, client_side: bool, settings: H2Settings | None = None) -> None:
        self.client_side = client_side
        self.settings = s = settings or H2Settings()
        self._encoder = StaticEncoder()
        self._out: list[bytes | memoryview] = [w.PREFACE] if client_side else []
        self._streams: dict[int, H2Stream] = {}
        self._mine = 1 if client_side else 0  # parity of the stream ids we open (§5.1.1)
        self._next_sid = 1 if client_side else 2
        self._last_inbound = 0  # highest stream id the peer opened
        self._inbound = self._outbound = 0  # open streams each side started (§5.1.2)
        self._reset_by_us: dict[int, None] = {}
        self._conn_window = s.connection_window  # receive side
        self._conn_unacked = 0
        self._send_conn = w.DEFAULT_WINDOW
        self._peer_initial = w.DEFAULT_WINDOW
        self._peer_max_frame = w.DEFAULT_MAX_FRAME
        self._peer_max_streams = 1 << 31  # unlimited until the peer says (§6.5.2)
        self._goaway_sent: int | None = None
        self.goaway_received = False
        self.dead = False
        self.error: str | None = None  # why we failed the connection, for logs and tests
        self._out.append(w.settings({
            w.ENABLE_PUSH: 0,
            w.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            w.INITIAL_WINDOW_SIZE: s.stream_window,
            w.MAX_FRAME_SIZE: s.max_frame_size,
            w.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }))  # fmt: skip
        if s.connection_window > w.DEFAULT_WINDOW:
            self._out.append(w.window_update(0, s.connection_window - w.DEFAULT_WINDOW))

    # ---- output ----
    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)

    def _idle(self, sid: int) -> bool:
        """Never opened (§5.1 "idle"): any frame but HEADERS/PRIORITY on it is a connection error."""
        return sid >= self._next_sid if sid & 1 == self._mine else sid > self._last_inbound

    # ---- errors (§5.4) ----
    def _stream_error(self, sid: int, code: int, events: list[H2Event]) -> None:
        st = self._streams.get(sid)
        self._refuse(sid, code)
        if st is not None:
            events.append(StreamReset(sid, code))

    def _refuse(self, sid: int, code: int) -> None:
        """RST_STREAM ``sid``; frames the peer already sent on it are then dropped quietly."""
        st = self._streams.get(sid)
        if st is not None:
            self._remove(st)
        self._out.append(w.rst_stream(sid, code))
        memory = self._reset_by_us
        memory[sid] = None
        if len(memory) > RESET_MEMORY:
            del memory[next(iter(memory))]

    def _fail(self, code: int, events: list[H2Event], reason: str = "") -> None:
        """A connection error: GOAWAY with ``code``; every stream is gone."""
        if not self.dead:
            self._out.append(w.goaway(self._last_inbound, code))
        self.dead = True
        self.error = reason or self.error
        self._streams.clear()
        events.append(ConnectionClosed(code, self._last_inbound))

    def _remove(self, st: H2Stream) -> None:
        if self._streams.pop(st.sid, None) is not None:
            if st.sid & 1 == self._mine:
                self._outbound -= 1
            else:
                self._inbound -= 1

    # ---- receive flow control ----
    def _credit_conn(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self.settings.connection_window >> 1:
            self._out.append(w.window_update(0, self._conn_unacked))
            self._conn_window += self._conn_unacked
            self._conn_unacked = 0

    def consumed(self, stream_id: int, n: int) -> None:
        """The consumer took ``n`` delivered bytes: grant them back once half a window accumulates."""
        if n <= 0 or self.dead:
            return
        self._credit_conn(n)
        st = self._streams.get(stream_id)
        if st is not None and st.remote_open:
            st.unacked += n
            if st.unacked >= self.settings.stream_window >> 1:
                self._out.append(w.window_update(stream_id, st.unacked))
                st.recv_window += st.unacked
                st.unacked = 0

    # ---- actions ----
    def open_stream(self, headers: RawHeaders, end_stream: bool) -> int:
        """Client: send a request head on a new stream; raises :class:`H2ProtocolError` when the
        connection cannot take one (GOAWAY, stream ids exhausted, the peer's concurrency limit)."""
        if self.closing:
            raise H2ProtocolError("connection is closing")
        sid = self._next_sid
        if sid > w.MAX_STREAM_ID or self._outbound >= self._peer_max_streams:
            raise H2ProtocolError("no stream available (ids exhausted or the peer's limit)")
        self._next_sid = sid + 2
        st = H2Stream(sid, self.settings.stream_window, self._peer_initial, -1)
        st.final_head = False
        st.final_sent = True
        for name, value in headers:
            if name[:1] != b":":
                break
            if name == b":method":
                st.head_request = value == b"HEAD"  # its response has no body, whatever it declares
        self._streams[sid] = st
        self._outbound += 1
        self._send_block(st, headers, end_stream)
        return sid

    def send_headers(self, stream_id: int, headers: RawHeaders, end_stream: bool) -> None:
        """A response head, an informational head (``:status`` 1xx), or trailers (``end_stream``)."""
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            raise H2ProtocolError(f"stream {stream_id} is closed")
        if not st.final_sent:
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if status[:1] == b"1":
                if end_stream:
                    raise H2ProtocolError("END_STREAM on an informational head")
            else:
                st.final_sent = True
        elif not end_stream:
            raise H2ProtocolError("trailers must end the stream")
        self._send_block(st, headers, end_stream)

    def _send_block(self, st: H2Stream, headers: RawHeaders, end_stream: bool) -> None:
        block = self._encoder.encode(headers)
        self._out.append(w.frame_header_block(st.sid, block, end_stream, self._peer_max_frame))
        if end_stream:
            self._local_end(st)

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Frame as much of ``data`` as the peer's windows allow; return how much. The caller keeps
        the rest until ``WindowOpened``. ``data`` must not change until ``data_to_send``."""
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            return 0
        n = min(len(data), st.send_window, self._send_conn)
        if n <= 0:
            return 0
        out = self._out
        max_frame = self._peer_max_frame
        if n <= max_frame:
            out.append(w.data_header(n, stream_id))
            out.append(data if n == len(data) else memoryview(data)[:n])
        else:
            view = memoryview(data)
            for off in range(0, n, max_frame):
                k = min(max_frame, n - off)
                out.append(w.data_header(k, stream_id))
                out.append(view[off : off + k])
        st.send_window -= n
        self._send_conn -= n
        return n

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM on our side: an empty DATA frame."""
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            raise H2ProtocolError(f"stream {stream_id} is closed")
        self._out.append(w.end_stream(stream_id))
        self._local_end(st)

    def _local_end(self, st: H2Stream) -> None:
        st.local_open = False
        if not st.remote_open:
            self._remove(st)

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return 0 if st is None else min(st.send_window, self._send_conn)

    def reset(self, stream_id: int, code: int = w.CANCEL) -> None:
        """RST_STREAM a stream that is still open (a closed or unknown one is left alone)."""
        if stream_id in self._streams and not self.dead:
            self._refuse(stream_id, code)

    def close(self, code: int = 0) -> None:
        """GOAWAY: no new streams; with code 0 the open ones may finish (graceful drain)."""
        if self.dead or self._goaway_sent is not None:
            return
        self._goaway_sent = last = self._last_inbound
        self._out.append(w.goaway(last, code))
        if code:
            self.dead = True

    @property
    def max_outbound_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says otherwise)."""
        return self._peer_max_streams

    @property
    def closing(self) -> bool:
        return self.dead or self.goaway_received or self._goaway_sent is not None

    @property
    def open_streams(self) -> int:
        """Streams not yet closed both ways (for tests and gauges)."""
        return len(self._streams)
