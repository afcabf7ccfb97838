"""Write coalescing and read pausing shared by both HTTP/1.1 codecs.

Measured (envoy-peer.md, "What made the difference" item 3): one write per read event, head and
body together, saved 19% CPU per request. A reader *corks* the writer it feeds for the duration of
one ``data_received`` and uncorks it after, so everything produced by that read leaves in one
``writelines`` (a vectored write on uvloop).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class CorkedWriter:
    """Buffers writes while corked; passes them straight through otherwise."""

    __slots__ = ("_corks", "_out", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self._out: list[bytes] = []
        self._corks = 0

    def write(self, data: bytes) -> None:
        if self._corks:
            self._out.append(data)
        elif data:
            self.transport.write(data)

    def cork(self) -> None:
        self._corks += 1

    def uncork(self) -> None:
        corks = self._corks - 1
        if corks > 0:
            self._corks = corks
            return
        self._corks = 0
        self.flush()  # not only when ``_out`` has data: a subclass (h2's SessionWriter) keeps its own

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if not self.transport.is_closing():
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)


class ReadPauser:
    """Pauses a transport's reading while any of several independent reasons holds.

    Reasons are bits (pipelined request waiting, peer's write buffer full, a filter holding
    data): the transport is resumed only when every reason is gone.
    """

    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.ReadTransport = transport  # type: ignore[assignment]
        self._reasons = 0

    def pause(self, reason: int) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons |= reason

    def resume(self, reason: int) -> None:
        if not self._reasons & reason:
            return
        self._reasons &= ~reason
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()


PIPELINE = 1  # a later pipelined request waits for the current response
PEER_FULL = 2  # the other side's write buffer is above its high-water mark
HELD = 4  # a filter stopped iteration and the chain is holding data


class RelayPeer(Protocol):
    """One end of an opaque byte relay (after ``101 Switching Protocols``): bytes in, bytes out."""

    def relay_write(self, data: bytes) -> None: ...
    def relay_close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
