"""Several worker processes on one port, as Envoy's ``--concurrency`` workers.

The parent forks before any event loop exists; each child runs the role with ``SO_REUSEPORT`` on
its listeners, so the kernel spreads new connections over the workers without a shared lock
(envoy-peer.md: +25% on a 2-core machine, about 27 MiB per extra worker). The parent only
forwards SIGTERM/SIGINT and waits; when one worker dies, the others are stopped too, so a
supervisor (the kubelet) sees the failure instead of a silently shrunken proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def worker_count(requested: int) -> int:
    """``0`` means one worker per CPU (Envoy's default concurrency)."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def run_workers(count: int, run_worker: Callable[[int], int]) -> int:
    """Run ``run_worker(index)`` in ``count`` processes (in this one when count is 1)."""
    if count <= 1:
        return run_worker(0)
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the child never returns into the parent's code
            code = 1
            try:
                code = run_worker(index)
            finally:
                os._exit(code)
        children[pid] = index
    return _supervise(children)


def _supervise(children: dict[int, int]) -> int:
    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    stopping = False
    while children:
        pid, status = os.wait()
        index = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        worst = worst or (code if code > 0 else (1 if code < 0 else 0))
        if index is not None and code != 0 and not stopping:
            log.error("worker %d exited with %d: stopping the others", index, code)
            stopping = True
            forward(signal.SIGTERM, None)
    return worst
