"""The asyncio edge of one HBONE connection: feeds TLS bytes to :class:`HboneConnection`,
turns its events into :class:`HboneStream` callbacks, flushes once per loop turn.

Thin on purpose (hypercorn's ``asyncio/tcp_server.py`` shape): every protocol decision is in
the sans-I/O connection. Keepalive as ztunnel (facts §1.3, ``ZT:src/proxy/h2.rs``): a PING every
10 s, the connection dropped when no answer comes within 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import h2.exceptions

from waypoint.buffers import READ_SIZE, OwnedBuffer, new_buffer, next_read_size
from waypoint.errors import TunnelError
from waypoint.hbone.connection import HboneConnection
from waypoint.hbone.events import (
    ConnectionClosed,
    DataReceived,
    Headers,
    PingAnswered,
    StreamEnded,
    StreamReset,
    TunnelAnswered,
    TunnelRequested,
    WindowOpened,
)
from waypoint.hbone.stream import CANCEL, HboneStream

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
WRITE_CHUNK = 256 * 1024  # plaintext handed to TLS per write: bounded copies, warm caches
_NO_BUFFER = OwnedBuffer()
Opened = tuple[HboneStream, asyncio.BaseProtocol]


class HboneConnectionProtocol(asyncio.BufferedProtocol):
    """One TLS connection carrying HBONE tunnels, either side.

    ``verify_peer(ssl_object)`` runs first in ``connection_made`` (after the handshake) and
    returns the peer identity or raises; ``on_rejected(exc)`` then hears why, and the connection
    is aborted. ``on_tunnel(stream)`` (server) gets each requested tunnel, not yet answered.
    """

    def __init__(
        self,
        conn: HboneConnection,
        *,
        verify_peer: Callable[[Any], object] | None = None,
        on_rejected: Callable[[BaseException, Any], None] | None = None,
        on_tunnel: Callable[[HboneStream], None] | None = None,
        on_idle: Callable[[HboneConnectionProtocol], None] | None = None,
        keepalive_s: float = 10.0,
        ping_timeout_s: float = 20.0,
    ) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_identity: object = None
        self.streams: dict[int, HboneStream] = {}
        self.tls_paused = False
        self.closed = self.loop.create_future()
        self.ready: asyncio.Future[None] = self.loop.create_future()  # peer SETTINGS seen
        self._verify = verify_peer
        self._on_rejected = on_rejected
        self._on_tunnel = on_tunnel
        self._on_idle = on_idle
        self._pending: dict[int, tuple[asyncio.Future[Opened], ProtocolFactory]] = {}
        self._flush_scheduled = False
        self._keepalive_s, self._ping_timeout_s = keepalive_s, ping_timeout_s
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._pings = 0
        self._extra: dict[str, Any] = {}
        self._rbuf = _NO_BUFFER
        self._rsize = READ_SIZE
        conn.data_sink = self._on_data

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's SSL transport: duck-typed
        for name in ("peername", "sockname", "ssl_object"):
            self._extra[name] = transport.get_extra_info(name)
        if self._verify is not None:
            try:
                self.peer_identity = self._verify(self._extra["ssl_object"])
            except Exception as exc:
                if self._on_rejected is not None:
                    self._on_rejected(exc, self._extra["peername"])
                transport.abort()  # type: ignore[attr-defined]
                return
        self._extra["peer_identity"] = self.peer_identity
        self._ping_timer = self.loop.call_later(self._keepalive_s, self._send_ping)
        self._flush()

    def get_buffer(self, sizehint: int) -> OwnedBuffer:
        """A fresh buffer for each read: uvloop's TLS transport decrypts straight into it (no
        per-record ``bytes`` and no join of them), and the payload views handed on stay valid.

        Sized from the last read (:func:`next_read_size`): uvloop hints 256 KiB every time, and
        zero-filling that per 100-byte message cost ~4 us; bulk reads fill it and stay large."""
        hint = sizehint if sizehint > 0 else READ_SIZE
        buf = self._rbuf = new_buffer(self._rsize if self._rsize < hint else hint)
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        buf, self._rbuf = self._rbuf, _NO_BUFFER
        self._rsize = next_read_size(nbytes, len(buf))
        self._received(memoryview(buf)[:nbytes], True)

    def data_received(self, data: bytes) -> None:
        self._received(data, False)

    def _received(self, data: bytes | memoryview, owned: bool) -> None:
        try:
            events = self.conn.receive_data(data, owned)
        except h2.exceptions.H2Error:  # a state h2 refuses that we did not foresee: drop it all
            log.exception("HBONE connection error")
            self._abort()
            return
        streams = self.streams
        for ev in events:
            if type(ev) is DataReceived:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_data(ev.data)
                else:
                    self.conn.consumed(ev.stream_id, len(ev.data))
            elif type(ev) is WindowOpened:
                if ev.stream_id:
                    target = streams.get(ev.stream_id)
                    if target is not None:
                        target._drain()
                else:
                    for stream in list(streams.values()):
                        stream._drain()
            else:
                self._on_event(ev)
        if not self.ready.done() and self.conn.settings_received:
            self.ready.set_result(None)
        conn = self.conn
        if conn.dead or conn.has_output():  # a read of DATA alone has nothing to answer:
            self.schedule_flush()  # no flush callback, no empty take_output, per message

    def _on_data(self, stream_id: int, data: memoryview) -> None:
        """The connection's ``data_sink``: a payload with no event queued before it."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_data(data)
        else:
            self.conn.consumed(stream_id, len(data))

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, TunnelRequested):
            stream = HboneStream(self, ev.stream_id, ev.authority, ev.headers)
            self.streams[ev.stream_id] = stream
            if self._on_tunnel is None:
                self.reject(stream, 503)
            else:
                self._on_tunnel(stream)
        elif isinstance(ev, TunnelAnswered):
            self._on_answer(ev)
        elif isinstance(ev, StreamEnded):
            ended = self.streams.get(ev.stream_id)
            if ended is not None:
                ended._on_eof()
        elif isinstance(ev, StreamReset):
            self._on_reset(ev.stream_id, ConnectionResetError(f"HBONE stream reset by peer (code {ev.code})"))
        elif isinstance(ev, PingAnswered):
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
                self._ping_timer = self.loop.call_later(self._keepalive_s, self._send_ping)
        elif isinstance(ev, ConnectionClosed):
            self._check_drained()

    def _on_answer(self, ev: TunnelAnswered) -> None:
        entry = self._pending.pop(ev.stream_id, None)
        if entry is None:
            return
        future, factory = entry
        if ev.status != 200:
            if not future.done():
                future.set_exception(TunnelError(ev.status, f"CONNECT answered {ev.status}"))
            return
        stream = HboneStream(self, ev.stream_id, "", ev.headers)
        self.streams[ev.stream_id] = stream
        if future.done():  # the opener gave up meanwhile
            stream.abort()
            return
        protocol = factory()
        stream._attach(protocol)
        future.set_result((stream, protocol))

    def _on_reset(self, sid: int, exc: BaseException) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream._on_reset(exc)
        entry = self._pending.pop(sid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(TunnelError(503, f"CONNECT stream reset: {exc}"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self.conn.dead = True
        lost = exc if exc is not None else ConnectionResetError("HBONE connection closed")
        for sid in list(self.streams):
            self._on_reset(sid, lost)
        for sid in list(self._pending):
            self._on_reset(sid, lost)
        if not self.ready.done():
            self.ready.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        self.tls_paused = True

    def resume_writing(self) -> None:
        self.tls_paused = False
        self.schedule_flush()  # frames queued while paused go first, in order
        for stream in list(self.streams.values()):
            stream._drain()

    # --- output --------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Coalesce: one flush (a few TLS writes at most) per event-loop turn."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand queued frames to TLS in writes of at most ``WRITE_CHUNK`` bytes, until the TLS
        transport pushes back (``pause_writing``, called from inside a write); the rest waits,
        as views, for ``resume_writing``. A dead connection writes all, then closes."""
        self._flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        conn = self.conn
        dead = conn.dead
        while dead or not self.tls_paused:
            pieces = conn.take_output(WRITE_CHUNK)
            if not pieces:
                break
            if len(pieces) == 1:
                transport.write(pieces[0])
            else:
                transport.writelines(pieces)
            if not conn.has_output():  # the usual case: all of it went in one write, so no
                break  # second take_output (a list and a take_writes call per message)
        if dead:
            transport.close()

    # --- streams -------------------------------------------------------------------------------

    async def open_stream(
        self, authority: str, headers: Headers, protocol_factory: ProtocolFactory
    ) -> tuple[HboneStream, asyncio.BaseProtocol]:
        """Client: CONNECT and wait for the answer; non-200 raises ``TunnelError(status)``."""
        if self.transport is None or self.conn.closing:
            raise TunnelError(503, "HBONE connection is closing")
        try:
            sid = self.conn.open_tunnel(authority, headers)
        except h2.exceptions.H2Error as exc:
            raise TunnelError(503, f"cannot open stream: {exc}") from exc
        future: asyncio.Future[tuple[HboneStream, asyncio.BaseProtocol]] = self.loop.create_future()
        self._pending[sid] = (future, protocol_factory)
        self.schedule_flush()
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(sid, None) is not None:
                self.conn.reset(sid, CANCEL)
                self.schedule_flush()
            raise

    def accept(
        self, stream: HboneStream, protocol_factory: ProtocolFactory, headers: Headers = ()
    ) -> asyncio.BaseProtocol:
        """Server: answer 200 and attach the protocol; buffered early data follows."""
        if stream.is_closing() or self.streams.get(stream.stream_id) is not stream:
            raise ConnectionResetError("the tunnel was reset before it was answered")
        try:
            self.conn.accept(stream.stream_id, headers)
        except h2.exceptions.H2Error as exc:
            raise ConnectionResetError(f"cannot answer the tunnel: {exc}") from exc
        self.schedule_flush()
        protocol = protocol_factory()
        stream._attach(protocol)
        return protocol

    def reject(self, stream: HboneStream, status: int) -> None:
        if self.streams.get(stream.stream_id) is stream:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.reject(stream.stream_id, status)
            stream._on_reset(None)
            self.schedule_flush()

    def _unregister(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self._check_drained()

    def _check_drained(self) -> None:
        if not self.streams and not self._pending:
            if self.conn.closing and self.transport is not None:
                self.schedule_flush()
                self.loop.call_soon(self._close_transport)
            elif self._on_idle is not None:
                self._on_idle(self)

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            data = self.conn.data_to_send()  # all of it (the GOAWAY too), paused or not
            if data:
                transport.write(data)
            transport.close()

    @property
    def active_streams(self) -> int:
        return len(self.streams) + len(self._pending)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    # --- keepalive and shutdown -------------------------------------------------------------------

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.transport is None:
            return
        self._pings += 1
        self.conn.ping(self._pings.to_bytes(8, "big"))
        self.schedule_flush()
        self._pong_timer = self.loop.call_later(self._ping_timeout_s, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        log.info("HBONE peer %s did not answer PING: dropping the connection", self._extra.get("peername"))
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def shutdown(self, grace_s: float) -> None:
        """GOAWAY, let open streams finish until the deadline, then close (facts §1.3 drain)."""
        if self.transport is None:
            return
        self.conn.close(0)
        self._flush()
        self._check_drained()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), grace_s)
        except TimeoutError:
            self._abort()
            await self.closed
