"""What every benchmark shares: process CPU/RSS meters, cheap load generators, HTTP tools, tables.

Methodology (bench/README.md): ours and Envoy run in the same invocation on the same machine,
and are compared per CPU-second of each proxy process, read from ``/proc/<pid>/stat`` (utime +
stime deltas over the load phase) and ``/proc/<pid>/status`` (VmHWM, the peak RSS). The load
generators are uvloop protocols writing one preallocated buffer, so they cost little next to
the proxies; round trips take several connections in turn (:class:`RoundRobinPings`) so their
samples share the machine's conditions, and repeated figures are reported as a :class:`Spread`.
The whole machine is loopback-only and every phase is bounded in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

_CLK_TCK = os.sysconf("SC_CLK_TCK")
GB = 1e9


# --- process meters -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the highest resident set size ``pid`` has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class CpuMeter:
    """CPU seconds each named process used between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        return self.used


@dataclass
class Running:
    """Processes a scenario started: their pids by role name, and how to stop them all."""

    pids: dict[str, int]
    stop: Callable[[], None]
    entry: tuple[str, int] | None = None  # where the load generator connects, if not preset


class NotAvailable(Exception):
    """A scenario that cannot run here (ours not built yet, a tool missing); printed, not fatal."""


MACHINE_LOCK = Path(tempfile.gettempdir()) / "waypoint-bench.lock"


@contextlib.contextmanager
def machine_to_ourselves(lock: Path = MACHINE_LOCK) -> Iterator[None]:
    """Hold the machine-wide bench lock (``flock``): a second bench run waits here instead of
    binding the same fixed loopback addresses or stealing CPU from this one's measured windows."""
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            print(f"waiting for another bench run to finish ({handle.read().strip() or lock})", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_free(addresses: Iterable[tuple[str, int]]) -> None:
    """Fail loudly, before starting anything, when a fixed bench address is taken (a stray process
    or a script that skips the lock): a proxy that cannot bind may still report ready."""
    for address in addresses:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
            try:
                probe.bind(address)
            except OSError as error:
                raise NotAvailable(f"{address[0]}:{address[1]} is in use ({error.strerror}); another bench?") from None


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


# --- statistics ---------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass(frozen=True)
class Spread:
    """A figure measured once per round (``--repeat``): its median and range. One run's figure can
    be off 2-4x on a busy two-core machine, so a reader needs the range beside the median."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        kept = [value for value in values if value == value]  # NaN: a round with nothing to show
        if not kept:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(statistics.median(kept), min(kept), max(kept))

    def fmt(self, digits: int = 2) -> str:
        """``median [low..high]``, or the bare value when every round agrees (or there was one)."""
        if self.low == self.high or self.median != self.median:
            return fmt(self.median, digits)
        return f"{fmt(self.median, digits)} [{fmt(self.low, digits)}..{fmt(self.high, digits)}]"


# --- HTTP load tools ----------------------------------------------------------------------------
@dataclass
class HttpResult:
    requests: int
    seconds: float
    bytes_read: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise NotAvailable(f"{tool} not installed (run bench/setup.sh)")
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SIZE_UNITS = {"B": 1.0, "KB": 1024.0, "MB": 1024.0**2, "GB": 1024.0**3}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")


def _search(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text)
    if found is None:
        raise NotAvailable(f"unexpected tool output (no {pattern!r}):\n{text[-800:]}")
    return found


def run_wrk(url: str, seconds: float, connections: int) -> HttpResult:
    """HTTP/1.1 keep-alive load from one wrk thread (the machine has two cores)."""
    cmd = [_require("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    total = _search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise NotAvailable(f"wrk saw {errors.group(1)} error responses from {url}")
    return HttpResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2)) / 1e3,
        bytes_read=float(total.group(3)) * _SIZE_UNITS[total.group(4)],
        p50_ms=_ms(_search(r"\s50%\s+(\S+)", out).group(1)),
        p99_ms=_ms(_search(r"\s99%\s+(\S+)", out).group(1)),
    )


def run_h2load(url: str, seconds: float, clients: int, streams: int) -> HttpResult:
    """h2c (prior knowledge) load: ``clients`` connections x ``streams`` concurrent streams."""
    cmd = [_require("h2load"), f"-c{clients}", f"-m{streams}", "-t1", f"-D{max(1, round(seconds))}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    elapsed = _search(r"finished in ([\d.]+\w+),", out)
    ok = _search(r"(\d+) succeeded", out)
    status = _search(r"status codes: (\d+) 2xx", out)
    if int(ok.group(1)) == 0 or int(status.group(1)) != int(ok.group(1)):
        raise NotAvailable(f"h2load got errors from {url}:\n{out[-800:]}")
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return HttpResult(
        requests=int(ok.group(1)),
        seconds=_ms(elapsed.group(1)) / 1e3,
        mean_ms=_ms(mean.group(1)) if mean else float("nan"),
    )


# --- tables -------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN prints as "-"


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        cells = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print("  ".join(cells))


def ratio(ours: float, envoy: float) -> str:
    """ours / Envoy, or "-" when either side is missing."""
    if ours != ours or envoy != envoy or envoy == 0:
        return "-"
    return f"{ours / envoy:.2f}x"
