"""Shared pieces of the HBONE hardening tests: deadlines, echo and pump protocols, resource counts.

Loopback addresses 127.0.3.100-199 belong to these tests (lower 127.0.3.x are test_tls_loopback's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable

MiB = 1 << 20


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``cond()`` to be truthy, failing at the deadline (never sleep-and-hope)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.005)


def open_sockets() -> int:
    """Sockets this process holds (other fds, e.g. OpenSSL's lazily opened files, are not ours)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


class Echo(asyncio.Protocol):
    """Echoes bytes, half-closes when the peer does; backpressure both ways."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class Sink(asyncio.Protocol):
    """Counts and hashes what arrives; ``lost`` resolves with connection_lost's argument."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.eof = False
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Pump(Sink):
    """Writes an endless stream of bytes as fast as the transport takes them (a transfer that
    is always mid-way), and counts what comes back."""

    CHUNK = b"p" * (64 * 1024)

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().call_soon(self._fill)

    def _fill(self) -> None:
        while not self._paused and not self.lost.done() and not self.transport.is_closing():
            self.transport.write(self.CHUNK)
            self.sent += len(self.CHUNK)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        asyncio.get_running_loop().call_soon(self._fill)
