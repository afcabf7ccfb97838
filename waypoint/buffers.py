"""Read buffers that are filled once and never written again, allocated without zero-filling.

Why a type of its own: a byte that was read from one socket is queued, as a view, until it is
written to another (an HBONE stream's frames wait for the connection's flush, a TCP transport
keeps what the kernel did not take). A view of ``bytes`` is safe to queue; a view of a buffer
the reader fills again is not, and writers copy it (``HboneStream.write``). :class:`OwnedBuffer`
marks a buffer that is fresh for every read and never refilled, so its views are queued as they
are: one copy less per byte on the relay's read side and on the HBONE receive side.

Why not ``bytearray(n)``: it zero-fills, and at 256 KiB per read that was ~5 us per read, the
memset a sixth of the bytes' whole user-space path (``perf`` on ``python -m bench.l4``).
``PyByteArray_Resize`` (CPython's public C API) grows an empty one without touching the new
bytes; with the allocator's thresholds fixed (:mod:`waypoint.hbone.allocator`) the memory comes
from the heap, not from fresh zeroed pages. Small buffers are zero-filled as usual: below
``_UNINIT_FROM`` the ctypes call costs more than the memset it saves.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from typing import TypeGuard


class OwnedBuffer(bytearray):
    """A buffer one read fills; nobody writes to it afterwards, so views of it are stable."""

    __slots__ = ()


STABLE_BUFFERS = (bytes, OwnedBuffer)
"""Types whose views a writer may queue without copying."""

_UNINIT_FROM = 64 * 1024  # measured: 16 KiB zeroed 0.7 us vs 1.6 us uninitialised; 256 KiB 5.4 vs 1.0


def _resize_function() -> Callable[[OwnedBuffer, int], int] | None:
    if platform.python_implementation() != "CPython":
        return None
    resize = ctypes.pythonapi.PyByteArray_Resize
    resize.argtypes = [ctypes.py_object, ctypes.c_ssize_t]
    resize.restype = ctypes.c_int
    return resize  # type: ignore[no-any-return]


_resize = _resize_function()


def new_buffer(size: int) -> OwnedBuffer:
    """An :class:`OwnedBuffer` of ``size`` bytes; its contents are undefined above 64 KiB."""
    if size < _UNINIT_FROM or _resize is None:
        return OwnedBuffer(size)
    buf = OwnedBuffer()
    if _resize(buf, size) != 0:  # pragma: no cover - MemoryError is raised by ctypes first
        raise MemoryError(size)
    return buf


READ_SIZE = 256 * 1024
"""The largest read: one bulk read fills it (uvloop's own read buffer is 256,000 bytes)."""
MIN_READ = 16 * 1024
"""The smallest: one full TLS record's plaintext (RFC 8446 §5.1), and any small message."""


def next_read_size(nbytes: int, size: int) -> int:
    """The next read's buffer size: back to the most (:data:`READ_SIZE`) once a read filled its
    buffer, else twice what was read, at least :data:`MIN_READ`. Bulk reads stay large, a
    100-byte message does not pay for 256 KiB."""
    if nbytes >= size:
        return READ_SIZE
    return max(MIN_READ, 2 * nbytes)


def is_stable(data: object) -> TypeGuard[bytes | memoryview]:
    """True for ``bytes`` and views of buffers nobody writes again: queue them as they are."""
    return type(data) is bytes or (isinstance(data, memoryview) and type(data.obj) in STABLE_BUFFERS)
