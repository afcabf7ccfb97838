"""``HboneStream``: one HBONE tunnel seen as an ``asyncio.Transport``.

The L4 relay and the L7 engine are written once against asyncio's Transport/Protocol pair and
run unchanged over a socket or over a tunnel. Flow control *is* the backpressure: while the
reader is paused, received bytes are held and not acked, so the peer's window closes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from waypoint.buffers import is_stable
from waypoint.hbone.events import Headers

if TYPE_CHECKING:
    from waypoint.hbone.adapter import HboneConnectionProtocol

CANCEL = 0x8




class HboneStream(asyncio.Transport):
    """A tunnel's transport. ``write_eof`` half-closes (END_STREAM); ``close`` sends END_STREAM
    after buffered data and ends the protocol, still swallowing (and acking) whatever the peer
    sends until it ends too; ``abort`` resets (RST_STREAM CANCEL)."""

    def __init__(
        self, owner: HboneConnectionProtocol, stream_id: int, authority: str, headers: Headers
    ) -> None:
        super().__init__()
        self._owner = owner
        self._conn = owner.conn
        self.stream_id = stream_id
        self._info: dict[str, Any] = {"authority": authority, "headers": headers, "stream_id": stream_id}
        self._protocol: asyncio.BaseProtocol | None = None
        self._send: deque[bytes | memoryview] = deque()
        self._send_size = 0
        self._high, self._low = 64 * 1024, 16 * 1024
        self._write_paused = False
        self._eof_pending = self._eof_sent = False
        self._closing = False
        self._read_paused = True  # until a protocol is attached
        self._held: list[bytes | memoryview] = []
        self._unacked = 0  # delivered while paused: acked on resume
        self._eof_received = self._eof_delivered = False
        self._done = False  # gone at the HTTP/2 level
        self._lost = False  # connection_lost delivered

    # --- owner's side ---------------------------------------------------------------------

    def _attach(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._read_paused = False
        protocol.connection_made(self)  # it may pause_reading() right here
        if not self._read_paused and (self._held or self._eof_received):
            self._owner.loop.call_soon(self._deliver_held)

    def _on_data(self, data: bytes | memoryview) -> None:
        if self._closing or self._lost:
            self._conn.consumed(self.stream_id, len(data))  # nobody reads any more: discard
        elif self._read_paused or self._held:
            self._held.append(data)
        else:
            self._protocol.data_received(data)  # type: ignore[union-attr]
            if self._read_paused:
                self._unacked += len(data)
            else:
                self._conn.consumed(self.stream_id, len(data))

    def _on_eof(self) -> None:
        self._eof_received = True
        if not self._held and not self._read_paused and self._protocol is not None:
            self._deliver_eof()
        self._maybe_done()

    def _on_reset(self, exc: BaseException | None) -> None:
        """RST_STREAM from the peer, or the whole connection gone: nothing more will flow."""
        self._done = True
        self._release_held()
        self._send.clear()
        self._send_size = 0
        self._owner._unregister(self.stream_id)
        self._finish(exc)

    def _drain(self) -> None:
        """Frame buffered writes into the peer's (re)opened window."""
        if self._done or self._owner.tls_paused:
            return
        conn, sid, send = self._conn, self.stream_id, self._send
        if send and not conn.is_send_open(sid):
            return  # gone in the batch being read: its reset clears the buffer next
        while send:
            chunk = send[0]
            n = conn.send(sid, chunk)
            self._send_size -= n
            if n < len(chunk):
                send[0] = memoryview(chunk)[n:]
                break
            send.popleft()
        self._owner.schedule_flush()
        if not send and self._eof_pending:
            self._send_eof()
        if self._write_paused and self._send_size <= self._low:
            self._write_paused = False
            self._protocol.resume_writing()  # type: ignore[union-attr]

    # --- asyncio.Transport ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self._closing or self._done or not data:
            return  # dropped after close/abort/reset, as asyncio's transports; empty is never EOF
        if self._eof_pending or self._eof_sent:
            raise RuntimeError("write() after write_eof()")  # the caller's own half-close
        if not self._conn.is_send_open(self.stream_id):
            return  # reset/GOAWAY/connection error read in this batch; its event is on its way
        if not is_stable(data):
            data = bytes(data)  # we queue views until the flush: the caller may reuse its buffer
        if not self._send and not self._owner.tls_paused:
            n = self._conn.send(self.stream_id, data)
            self._owner.schedule_flush()
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self._send.append(data)
        self._send_size += len(data)
        if not self._write_paused and self._send_size > self._high:
            self._write_paused = True
            self._protocol.pause_writing()  # type: ignore[union-attr]

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))  # one DATA frame for head and body (write coalescing)

    def write_eof(self) -> None:
        if self._eof_pending or self._eof_sent or self._done:
            return
        if self._send:
            self._eof_pending = True
        else:
            self._send_eof()

    def _send_eof(self) -> None:
        self._eof_pending = False
        self._eof_sent = True
        self._conn.end_stream(self.stream_id)
        self._owner.schedule_flush()
        if self._closing:
            self._finish(None)
        self._maybe_done()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing or self._done:
            return
        self._closing = True
        self._release_held()
        if self._eof_sent:
            self._finish(None)
        else:
            self.write_eof()

    def abort(self) -> None:
        if self._done:
            return
        self._conn.reset(self.stream_id, CANCEL)
        self._owner.schedule_flush()
        self._closing = True
        self._on_reset(None)

    def is_closing(self) -> bool:
        """True after close/abort, once the stream is gone, and as soon as the connection knows
        we can no longer send on it (a reset or connection error read but not yet delivered)
        while we had not half-closed ourselves. Not before the tunnel is answered."""
        if self._closing or self._done:
            return True
        if self._protocol is None or self._eof_sent:
            return False
        return not self._conn.is_send_open(self.stream_id)

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if self._read_paused and self._protocol is not None:
            self._read_paused = False
            self._owner.loop.call_soon(self._deliver_held)

    def is_reading(self) -> bool:
        return not self._read_paused

    def get_write_buffer_size(self) -> int:
        return self._send_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = 64 * 1024 if high is None else high
        self._high, self._low = high, high // 4 if low is None else low

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._info:
            return self._info[name]
        return self._owner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    # --- internals --------------------------------------------------------------------------

    def _deliver_held(self) -> None:
        while self._held and not self._read_paused and not self._lost:
            data = self._held.pop(0)
            self._protocol.data_received(data)  # type: ignore[union-attr]
            self._unacked += len(data)
        if not self._read_paused and self._unacked:
            self._conn.consumed(self.stream_id, self._unacked)
            self._unacked = 0
            self._owner.schedule_flush()
        if not self._held and not self._read_paused and self._eof_received and not self._eof_delivered:
            self._deliver_eof()
        self._maybe_done()

    def _deliver_eof(self) -> None:
        self._eof_delivered = True
        if self._lost or self._closing:
            return
        keep_open = self._protocol.eof_received()  # type: ignore[union-attr]
        if not keep_open:
            self.close()

    def _release_held(self) -> None:
        """Held or unacked bytes nobody will consume still count against the connection window."""
        n = self._unacked + sum(len(d) for d in self._held)
        self._held.clear()
        self._unacked = 0
        if n:
            self._conn.consumed(self.stream_id, n)
            self._owner.schedule_flush()

    def _maybe_done(self) -> None:
        if self._eof_sent and self._eof_received and not self._held and not self._done:
            self._done = True
            self._owner._unregister(self.stream_id)
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._protocol is not None:
            self._owner.loop.call_soon(self._protocol.connection_lost, exc)  # type: ignore[arg-type]
