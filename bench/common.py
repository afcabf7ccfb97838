"""What every benchmark shares: process CPU/RSS meters, cheap load generators, HTTP tools, tables.

Methodology (bench/README.md): ours and Envoy run in the same invocation on the same machine,
and are compared per CPU-second of each proxy process, read from ``/proc/<pid>/stat`` (utime +
stime deltas over the load phase) and ``/proc/<pid>/status`` (VmHWM, the peak RSS). The load
generators are uvloop protocols writing one preallocated buffer, so they cost little next to
the proxies; the whole machine is loopback-only and every phase is bounded in seconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
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


async def bulk_throughput(
    address: tuple[str, int],
    target: TargetServer,
    streams: int,
    seconds: float,
    meter: CpuMeter,
    warmup: float = 0.5,
) -> BulkResult:
    """Push bytes to ``target`` through ``address`` on ``streams`` connections; meter one window."""
    loop = asyncio.get_running_loop()
    chunk = os.urandom(256 * 1024)
    conns = [await loop.create_connection(lambda: _Blaster(chunk), *address) for _ in range(streams)]
    await asyncio.sleep(warmup)
    start_bytes, start = target.received, time.perf_counter()
    meter.start()
    await asyncio.sleep(seconds)
    cpu = meter.stop()
    delivered, elapsed = target.received - start_bytes, time.perf_counter() - start
    for transport, _ in conns:
        transport.abort()
    return BulkResult(delivered, elapsed, cpu)


class _PingPong(asyncio.Protocol):
    def __init__(self, size: int, until: float, done: asyncio.Future[list[int]]) -> None:
        self._payload = b"p" * size
        self._until, self._done = until, done
        self._pending = 0
        self._sent_at = 0
        self.samples: list[int] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(ECHO)
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._pending = len(self._payload)
        self._sent_at = time.perf_counter_ns()
        self._transport.write(self._payload)

    def data_received(self, data: bytes) -> None:
        self._pending -= len(data)
        if self._pending > 0:
            return
        now = time.perf_counter_ns()
        self.samples.append(now - self._sent_at)
        if now / 1e9 < self._until:
            self._send()
        elif not self._done.done():
            self._done.set_result(self.samples)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(self.samples)


async def ping_pong(address: tuple[str, int], seconds: float, size: int = 64) -> list[int]:
    """Round-trip times (ns) of ``size``-byte messages, one at a time on one connection."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[int]] = loop.create_future()
    until = time.perf_counter_ns() / 1e9 + seconds
    transport, _ = await loop.create_connection(lambda: _PingPong(size, until, done), *address)
    try:
        return await asyncio.wait_for(done, seconds + 10)
    finally:
        transport.close()


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


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
