"""L4 load generators: a target that sinks or echoes, bulk blasters, interleaved round trips.

They are uvloop protocols writing one preallocated buffer, so they cost little next to the
proxies they measure; round trips take several connections in turn (:class:`RoundRobinPings`)
so their samples share the machine's conditions. How a connection reaches a scenario's entry
(plain TCP, SOCKS5 first) is the caller's :data:`Connect`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from bench.common import GB, CpuMeter

# --- L4 target: one server that sinks or echoes -------------------------------------------------
SINK, ECHO = b"S", b"E"


class _TargetProtocol(asyncio.Protocol):
    """The first byte picks the mode: ``S`` counts and drops, ``E`` echoes (for round trips)."""

    def __init__(self, target: TargetServer) -> None:
        self._target = target
        self._mode = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._mode:
            self._mode, data = data[:1], data[1:]
        if self._mode == ECHO:
            assert self._transport is not None
            self._transport.write(data)
        else:
            self._target.received += len(data)


class TargetServer:
    """The destination app of an L4 bench; ``received`` counts sunk bytes."""

    def __init__(self) -> None:
        self.received = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TargetProtocol(self), host, port)
        address: tuple[str, int] = self.server.sockets[0].getsockname()[:2]
        return address

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _Blaster(asyncio.Protocol):
    """Writes one shared buffer as fast as the transport drains it; no copies on our side."""

    def __init__(self, chunk: bytes) -> None:
        self._chunk = chunk
        self._paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=1 << 20)
        self.transport.write(SINK)
        self._fill()

    def _fill(self) -> None:
        assert self.transport is not None
        while not self._paused and not self.transport.is_closing():
            self.transport.write(self._chunk)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._fill()


@dataclass
class BulkResult:
    delivered: int  # bytes the target received in the window
    seconds: float
    cpu: dict[str, float]  # CPU seconds per proxy process in the same window

    @property
    def gbit_per_s(self) -> float:
        return self.delivered * 8 / self.seconds / GB

    def cpu_s_per_gb(self, process: str) -> float:
        return self.cpu[process] / (self.delivered / GB) if self.delivered else float("nan")


Connect = Callable[[Callable[[], asyncio.Protocol]], Awaitable[asyncio.Transport]]
"""Opens one connection to a scenario's entry with the given protocol (plain TCP, or SOCKS5 first)."""


async def bulk_throughput(
    connect: Connect, target: TargetServer, streams: int, seconds: float, meter: CpuMeter, warmup: float = 0.5
) -> BulkResult:
    """Push bytes to ``target`` through ``connect`` on ``streams`` connections; meter one window."""
    chunk = os.urandom(256 * 1024)
    conns = [await connect(lambda: _Blaster(chunk)) for _ in range(streams)]
    await asyncio.sleep(warmup)
    start_bytes, start = target.received, time.perf_counter()
    meter.start()
    await asyncio.sleep(seconds)
    cpu = meter.stop()
    delivered, elapsed = target.received - start_bytes, time.perf_counter() - start
    for transport in conns:
        transport.abort()
    return BulkResult(delivered, elapsed, cpu)


class _Leg(asyncio.Protocol):
    """One connection of :class:`RoundRobinPings`: echo mode, then one message at a time, each
    echo's round-trip time handed straight back (a callback, no future: no extra loop turn)."""

    def __init__(self, pings: RoundRobinPings, index: int) -> None:
        self._pings, self._index = pings, index
        self._pending = 0
        self._sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(ECHO)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self._pending = len(payload)
        self._sent_at = time.perf_counter_ns()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._pending -= len(data)
        if self._pending <= 0:
            self._pings.echoed(self._index, time.perf_counter_ns() - self._sent_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pings.lost(self._index, exc)


class RoundRobinPings:
    """Round trips on several connections in turn: a message on the first, its echo, then one on the
    second, ... then the first again. A round gives every connection one sample under the same
    machine conditions, so a busy neighbour shifts them all alike and differences stay fair; only
    one connection is ever in flight, so the proxies never compete with each other either."""

    def __init__(self, size: int = 64) -> None:
        self._payload = b"p" * size
        self._legs: list[_Leg] = []
        self._samples: list[list[int]] = []
        self._until_ns = 0
        self._done: asyncio.Future[None] | None = None
        self._broken: str | None = None

    async def add(self, connect: Connect) -> None:
        leg = _Leg(self, len(self._legs))
        await connect(lambda: leg)
        self._legs.append(leg)

    async def run(self, seconds: float) -> list[list[int]]:
        """Whole rounds for ``seconds``: per connection (in :meth:`add` order) its round-trip times
        in ns, round ``k`` at index ``k`` of every list."""
        if self._broken is not None:
            raise ConnectionError(self._broken)
        self._samples = [[] for _ in self._legs]
        self._until_ns = time.perf_counter_ns() + int(seconds * 1e9)
        self._done = asyncio.get_running_loop().create_future()
        self._legs[0].send(self._payload)
        await asyncio.wait_for(self._done, seconds + 10)
        return self._samples

    def echoed(self, index: int, rtt_ns: int) -> None:
        self._samples[index].append(rtt_ns)
        following = index + 1
        if following == len(self._legs):
            if time.perf_counter_ns() >= self._until_ns:
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)
                return
            following = 0
        self._legs[following].send(self._payload)

    def lost(self, index: int, exc: Exception | None) -> None:
        self._broken = f"round-trip connection {index} closed: {exc!r}"
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError(self._broken))

    def close(self) -> None:
        self._broken = "closed"
        for leg in self._legs:
            if leg.transport is not None:
                leg.transport.close()
