"""L7 load tools: wrk (HTTP/1.1 keep-alive) and h2load (h2c), run as child processes and parsed.

Both are C and run one thread each, so the load costs little of the two cores beside the proxies.
A tool that is missing, or output that does not parse, is :class:`NotAvailable` (a note, not a crash).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from bench.common import NotAvailable


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
