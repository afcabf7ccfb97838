"""Fixed glibc ``malloc`` thresholds for a process that moves bulk bytes through HBONE.

Why: the data path allocates a few buffers of up to a few hundred KiB per event-loop turn (a
socket read, the ciphertext uvloop's TLS transport reads out of its memory BIO) and frees them
in the same turn. glibc's *dynamic* thresholds start at 128 KiB (mmap) and 2x that (trim), so
this pattern returns the top of the heap to the kernel and takes it back on every turn: about
750 ``brk`` calls a second and a fresh zeroed page fault for every page taken back, which
cost a tunnel's source side ~50% more CPU per GB in ``python -m bench.l4`` (1 stream). Fixed
thresholds (serve < 1 MiB from the heap, keep up to 32 MiB free at its top) stop that churn;
the churn-free alternative, writing everything at once, held 105 MiB peak. The top was first
kept at 4 MiB: with 8 bulk tunnels on one connection the heap still moved more than that,
~70 ``brk`` calls a second, and keeping 32 MiB took the source side's CPU per GB down 11%
(alternating runs, 8 streams).

Process-wide, so it belongs to the process's start (the role runtime), not to a library
import: call :func:`tune_allocator` once from ``main``. Same as setting
``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=33554432`` in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 32 << 20


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's thresholds; False (and nothing changed) where ``mallopt`` is not glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
