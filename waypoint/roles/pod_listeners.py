"""The local pods' HBONE listeners (``<pod IP>:15008``), kept in step with the config.

Readiness is ztunnel's: 200 once no named task is pending (``ZT:src/readiness/mod.rs``). A pod
whose ``<pod IP>:15008`` cannot be bound stays pending and is retried until it binds or leaves,
as in-pod ztunnel's ``pending_workloads`` (``ZT:src/inpod/statemanager.rs`` ``ready``,
``retry_pending``, ``del_workload``). ztunnel retries after a fixed 5 s
(``ZT:src/inpod/workloadmanager.rs`` ``schedule_retry``); we start at 0.5 s and double up to
10 s, so a port freed a moment later is served at once and a stuck one does not flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from waypoint.mesh.model import Workload

log = logging.getLogger(__name__)

Listen = Callable[[str, int], Awaitable[asyncio.Server]]


def bind_retry_delay(failures: int, first_s: float, max_s: float) -> float:
    """Seconds to wait after the ``failures``-th failed bind in a row: ``first_s`` doubling, capped."""
    return min(max_s, first_s * 2.0 ** min(max(failures - 1, 0), 60))


def hbone_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(slots=True)
class FailedBind:
    """A local pod whose HBONE listener could not be opened yet (it holds readiness back)."""

    failures: int  # attempts in a row that failed
    due: float  # loop time of the next retry
    error: str  # the last error, as the operator should see it


class PodListeners:
    """One HBONE listener per local pod; failed binds are retried by one background task.

    :meth:`sync` takes the wanted pods (IP -> workload) and opens what is missing at once (a
    new config retries at once); :meth:`pending` names what holds readiness back.
    """

    def __init__(self, listen: Listen, port: int, retry_s: float = 0.5, retry_max_s: float = 10.0) -> None:
        self._listen = listen
        self.port = port
        self._retry_s, self._retry_max_s = retry_s, retry_max_s
        self.listeners: dict[str, asyncio.Server] = {}
        self.failed: dict[str, FailedBind] = {}  # pod IP -> why its HBONE listener is missing
        self._pods: dict[str, Workload] = {}
        self._lock = asyncio.Lock()  # one bind at a time: sync and the retry task never race
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def pending(self) -> list[str]:
        return [f"hbone {hbone_address(ip, self.port)}" for ip in sorted(self.failed)]

    async def sync(self, wanted: dict[str, Workload]) -> None:
        async with self._lock:
            for ip in [ip for ip in self.listeners if ip not in wanted]:
                self.listeners.pop(ip).close()
                log.info("pod at %s gone: HBONE listener closed", ip)
            for ip in [ip for ip in self.failed if ip not in wanted]:
                del self.failed[ip]
                log.info("pod at %s gone: no more HBONE bind retries", ip)
            self._pods = wanted
            for ip in wanted:
                if ip not in self.listeners:
                    await self._bind(ip)
        self._schedule_retries()

    async def stop(self) -> None:
        """Cancel the retries; the listeners themselves close with the HBONE server."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.failed.clear()
        self.listeners.clear()

    async def _bind(self, ip: str) -> None:
        """Open ``<ip>:port``; on failure note why (readiness) and when to try again. Holds the lock."""
        pod = self._pods[ip]
        try:
            self.listeners[ip] = await self._listen(ip, self.port)
        except Exception as exc:  # in use, address gone, no certificate: all hold readiness and retry
            self._bind_failed(ip, pod, exc)
            return
        failed = self.failed.pop(ip, None)
        if failed is not None:
            log.info("HBONE for pod %s/%s on %s is up after %d failed attempts", pod.namespace, pod.name,
                     hbone_address(ip, self.port), failed.failures)

    def _bind_failed(self, ip: str, pod: Workload, exc: Exception) -> None:
        previous = self.failed.get(ip)
        failures = 1 if previous is None else previous.failures + 1
        delay = bind_retry_delay(failures, self._retry_s, self._retry_max_s)
        self.failed[ip] = FailedBind(failures, asyncio.get_running_loop().time() + delay, str(exc))
        # once per backoff step: the first failure and each time the wait grows, then quiet at the cap
        step_changed = failures == 1 or delay != bind_retry_delay(failures - 1, self._retry_s, self._retry_max_s)
        log.log(logging.ERROR if step_changed else logging.DEBUG,
                "cannot serve HBONE for pod %s/%s on %s (attempt %d): %s; retrying in %gs",
                pod.namespace, pod.name, hbone_address(ip, self.port), failures, exc, delay)

    def _schedule_retries(self) -> None:
        """Run the retry task while binds are failing; wake it so it sees the new set (or stops)."""
        if self.failed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="ztunnel-bind-retry")
        self._wake.set()

    async def _retry(self) -> None:
        loop = asyncio.get_running_loop()
        while self.failed:
            self._wake.clear()
            wait = min(f.due for f in self.failed.values()) - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue  # woken (config changed) or due: look again
            async with self._lock:
                now = loop.time()
                for ip in [ip for ip, f in self.failed.items() if f.due <= now]:
                    await self._bind(ip)
