"""What every benchmark shares: process CPU/RSS meters, the machine-wide run lock, statistics, tables.

Methodology (bench/README.md): ours and Envoy run in the same invocation on the same machine,
and are compared per CPU-second of each proxy process, read from ``/proc/<pid>/stat`` (utime +
stime deltas over the load phase) and ``/proc/<pid>/status`` (VmHWM, the peak RSS). Repeated
figures are reported as a :class:`Spread`. The whole machine is loopback-only and every phase is
bounded in seconds. The load itself comes from ``bench.l4load`` (uvloop protocols) and
``bench.l7load`` (wrk, h2load).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
