"""Splice two byte transports with asyncio Protocol callbacks only.

This is the L4 hot path: every byte a ztunnel forwards passes through ``_End.data_received``.
There is no Task, no StreamReader and no copy per connection; a chunk that arrives is written
to the other transport at once, and the only per-chunk work is one ``write`` and one integer
addition. A TCP side is read into a fresh :class:`~waypoint.buffers.OwnedBuffer` per read
(``BufferedProtocol``), so the bytes are not copied into a ``bytes`` object first and a tunnel
queues them as views (``perf`` on ``python -m bench.l4``: that copy was 6% of a source
ztunnel's CPU). Either side may be a TCP socket or an HBONE stream (``waypoint.hbone`` streams
implement ``asyncio.Transport``), so the same relay serves outbound, inbound and SOCKS5.

Behaviour, as ztunnel's ``copy.rs`` bidirectional copy has it:

* **Backpressure.** When one transport's write buffer goes above its high-water mark it calls
  ``pause_writing`` on its protocol (our end); we pause *reading* on the other transport until
  ``resume_writing``. Memory per connection stays bounded by the two buffer limits.
* **Half-close.** EOF from one side becomes ``write_eof`` on the other; the opposite direction
  keeps flowing. A transport is closed once it has both received and been sent EOF.
* **Resets.** A side lost with an error (RST, HBONE stream reset, TLS failure) aborts the
  other side, so a reset travels end to end instead of turning into a clean FIN.
* **Accept, decide, connect.** An end may be attached before its peer exists (the downstream
  is accepted, the role decides asynchronously where to go, then dials). Data arriving in
  the meantime is buffered up to ``pending_limit`` bytes, then reading pauses. ``fail()``
  ends a relay whose upstream never came.

Byte counts are plain ints; the metrics layer reads them when the relay ends (or at a slow
periodic flush), never per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from waypoint.buffers import MIN_READ, OwnedBuffer, new_buffer, next_read_size

DEFAULT_PENDING_LIMIT = 256 * 1024
"""Bytes held per end while its peer is not connected yet, before reading pauses."""

_PAUSED_BY_PEER = 1  # the other side's write buffer is full
_PAUSED_PENDING = 2  # our peer is not attached yet and we hold pending_limit bytes


_TCP_TRANSPORTS = frozenset({"TCPTransport", "_SelectorSocketTransport"})  # uvloop, asyncio
_LINGER_ZERO = struct.pack("ii", 1, 0)
_NO_BUFFER = OwnedBuffer()


def _reset(transport: asyncio.Transport) -> None:
    """Abort; on a TCP socket send RST (SO_LINGER 0), as a reset peer would see from ztunnel.

    Only plain TCP transports get the linger option: an HBONE stream's ``abort`` is already a
    RST_STREAM, and its outer socket is shared with other streams.
    """
    if type(transport).__name__ in _TCP_TRANSPORTS:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


class _End(asyncio.BufferedProtocol):
    """One side of a relay: the protocol installed on one transport.

    A socket transport reads into :meth:`get_buffer`'s buffer; an HBONE stream hands its DATA
    payloads to :meth:`data_received` (views of its own owned read buffers)."""

    __slots__ = (
        "_rbuf",
        "_relay",
        "_rsize",
        "eof_received_",
        "eof_sent",
        "lost",
        "lost_exc",
        "name",
        "nbytes",
        "paused",
        "peer",
        "pending",
        "pending_size",
        "transport",
    )

    def __init__(self, relay: Relay, name: str) -> None:
        self._relay = relay
        self.name = name
        self.peer: _End
        self.transport: asyncio.Transport | None = None
        self.nbytes = 0  # bytes read from this side (and forwarded, or pending, to the peer)
        self.pending: list[bytes | memoryview] = []
        self.pending_size = 0
        self.paused = 0  # bit set of _PAUSED_* reasons
        self.eof_received_ = False  # this side sent us EOF
        self.eof_sent = False  # we wrote EOF to this side
        self.lost = False
        self.lost_exc: BaseException | None = None
        self._rbuf = _NO_BUFFER
        self._rsize = MIN_READ

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it
        self.transport = cast(asyncio.Transport, transport)
        if self.lost:  # the relay failed before this side came: nothing to splice
            transport.close()
            return
        self._relay._attached(self)

    def get_buffer(self, sizehint: int) -> OwnedBuffer:
        buf = self._rbuf = new_buffer(self._rsize)
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        buf, self._rbuf = self._rbuf, _NO_BUFFER
        self._rsize = next_read_size(nbytes, len(buf))
        self.data_received(memoryview(buf)[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.nbytes += len(data)
        peer_transport = self.peer.transport
        if peer_transport is not None and not self.peer.lost:
            peer_transport.write(data)
            return
        if self.peer.lost:
            return  # nowhere to deliver; the relay is ending
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= self._relay.pending_limit:
            self._pause(_PAUSED_PENDING)

    def eof_received(self) -> bool:
        self.eof_received_ = True
        if self.peer.transport is not None:
            self.peer._send_eof()
        # else: delivered when the peer attaches (see _flush_pending)
        self._close_if_done()
        return True  # keep our write direction open (half-close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.lost_exc = exc
        self._relay._end_lost(self, exc)

    def pause_writing(self) -> None:
        self.peer._pause(_PAUSED_BY_PEER)

    def resume_writing(self) -> None:
        self.peer._resume(_PAUSED_BY_PEER)

    # -- helpers --------------------------------------------------------------------------
    def _pause(self, reason: int) -> None:
        was = self.paused
        self.paused |= reason
        if not was and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _send_eof(self) -> None:
        """Write EOF to this side (its peer finished sending)."""
        transport = self.transport
        if self.eof_sent or transport is None or self.lost:
            return
        self.eof_sent = True
        if transport.can_write_eof():
            transport.write_eof()
            self._close_if_done()
        else:
            transport.close()

    def _close_if_done(self) -> None:
        if self.eof_received_ and self.eof_sent and self.transport is not None and not self.lost:
            self.transport.close()

    def _flush_pending(self) -> None:
        """Our peer just attached: deliver what we held for it."""
        if self.pending:
            assert self.peer.transport is not None
            self.peer.transport.writelines(self.pending)
            self.pending = []
            self.pending_size = 0
        self._resume(_PAUSED_PENDING)
        if self.eof_received_:
            self.peer._send_eof()


class Relay:
    """A bidirectional splice between a downstream and an upstream transport.

    Install ``relay.downstream`` and ``relay.upstream`` as the protocols of the two transports
    (as a protocol factory's result, or with :meth:`adopt` for a transport that already has a
    protocol, e.g. after a SOCKS5 handshake). ``on_done(relay)`` runs once, when both sides are
    gone (or the relay failed before its second side came). ``on_accept(relay, transport)``
    runs when the downstream side attaches: the place to start deciding where to connect.

    Counters: ``bytes_up`` (downstream → upstream, the request direction, Istio's
    ``received_bytes``) and ``bytes_down`` (upstream → downstream, ``sent_bytes``).
    """

    __slots__ = (
        "_done", "downstream", "error", "failed", "on_accept", "on_done", "pending_limit", "upstream", "user",
    )

    def __init__(
        self,
        on_done: Callable[[Relay], None] | None = None,
        *,
        on_accept: Callable[[Relay, asyncio.Transport], None] | None = None,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
        user: Any = None,
    ) -> None:
        self.on_done = on_done
        self.on_accept = on_accept  # called when the downstream attaches: start deciding there
        self.pending_limit = pending_limit
        self.user = user  # the role's per-connection record (labels, ids); opaque here
        self.downstream = _End(self, "downstream")
        self.upstream = _End(self, "upstream")
        self.downstream.peer = self.upstream
        self.upstream.peer = self.downstream
        self._done = False
        self.failed = False
        self.error: BaseException | None = None  # first error that ended a side

    @property
    def bytes_up(self) -> int:
        return self.downstream.nbytes

    @property
    def bytes_down(self) -> int:
        return self.upstream.nbytes

    @property
    def done(self) -> bool:
        return self._done

    def adopt(self, end: _End, transport: asyncio.Transport, initial: bytes = b"") -> None:
        """Make ``end`` the protocol of an existing transport and feed it bytes read earlier."""
        transport.set_protocol(end)
        end.connection_made(transport)
        if initial:
            end.data_received(initial)

    def fail(self, exc: BaseException | None = None) -> None:
        """End the relay before it was spliced: the upstream could not be reached.

        Attached sides are closed (their buffered bytes flushed first, as ztunnel simply
        drops the app's connection after a failed CONNECT); sides never attached count as gone.
        """
        self.failed = True
        if self.error is None:
            self.error = exc
        for end in (self.downstream, self.upstream):
            end.pending = []
            if end.transport is None:
                end.lost = True
            elif not end.lost:
                end.transport.close()
        self._check_done()

    def abort(self) -> None:
        """Reset both sides (shutdown deadline passed, peer dead)."""
        for end in (self.downstream, self.upstream):
            if end.transport is None:
                end.lost = True
            elif not end.lost:
                _reset(end.transport)
        self._check_done()

    # -- called by the ends ---------------------------------------------------------------
    def _attached(self, end: _End) -> None:
        if end is self.downstream and self.on_accept is not None:
            assert end.transport is not None
            self.on_accept(self, end.transport)
            if end.lost or end.transport.is_closing():
                return
        peer = end.peer
        if peer.lost:
            # the other side is already gone (failed relay): nothing to splice to.
            assert end.transport is not None
            end.transport.close()
            return
        if peer.transport is not None:
            end._flush_pending()
            peer._flush_pending()

    def _end_lost(self, end: _End, exc: BaseException | None) -> None:
        peer = end.peer
        if exc is not None and self.error is None:
            self.error = exc
        if peer.transport is not None and not peer.lost:
            if exc is not None:
                _reset(peer.transport)  # a reset travels end to end
            elif not end.eof_received_:
                # gone without EOF (closed cleanly under us): finish the peer's write side.
                peer._send_eof()
                if not peer.eof_received_:
                    peer.transport.close()  # nothing can be delivered to `end` any more
            elif not peer.eof_received_:
                peer.transport.close()
        elif peer.transport is None:
            peer.lost = True  # never attached; nothing to wait for
        self._check_done()

    def _check_done(self) -> None:
        if self._done or not (self.downstream.lost and self.upstream.lost):
            return
        self._done = True
        if self.on_done is not None:
            self.on_done(self)
