"""The ztunnel role's live connections: metrics bookkeeping, the slow byte flush, the drain.

Every proxied connection is one :class:`~waypoint.l4.relay.Relay`. Its Istio metric record is
opened when the upstream is reached and closed (bytes added) when the relay ends; a timer every
``flush_interval_s`` adds the bytes of long-lived connections, so a scrape never lags by more
than that and the per-chunk path never touches Prometheus (facts §3.3; ztunnel's
``ConnectionResult`` updates its counters as it copies, we trade that for fewer calls).
Decision tasks (the async part between accept and splice) are tracked here too, so shutdown
can cancel them and tests can count that none is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from waypoint.l4.relay import Relay
from waypoint.telemetry.access_log import connection_complete
from waypoint.telemetry.metrics import ConnectionRecord, TcpMetrics, TrafficLabels

log = logging.getLogger(__name__)


class ConnectionTracker:
    def __init__(self, metrics: TcpMetrics, flush_interval_s: float = 5.0) -> None:
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self.live: set[Relay] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.completed = 0
        self._empty: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- relays ----------------------------------------------------------------------------------
    def new_relay(self, on_accept: Callable[[Relay, asyncio.Transport], None] | None = None) -> Relay:
        relay = Relay(self._relay_done, on_accept=on_accept)
        self.live.add(relay)
        return relay

    def opened(self, relay: Relay, labels: TrafficLabels) -> None:
        """The upstream is reached: the connection counts as opened (ztunnel's ConnectionOpen)."""
        relay.user = self.metrics.open(labels)

    def _relay_done(self, relay: Relay) -> None:
        self.live.discard(relay)
        self.completed += 1
        record = relay.user
        if isinstance(record, ConnectionRecord) and not record.closed:
            record.close(relay.bytes_up, relay.bytes_down)
            connection_complete(
                record.label_values, relay.bytes_up, relay.bytes_down, time.monotonic() - record.opened_at
            )
        if not self.live and self._empty is not None:
            self._empty.set()

    # -- decision tasks --------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection handler failed", exc_info=task.exception())

    # -- periodic flush --------------------------------------------------------------------------
    def start(self) -> None:
        if self._timer is None and self.flush_interval_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval_s, self._flush)

    def _flush(self) -> None:
        for relay in self.live:
            record = relay.user
            if isinstance(record, ConnectionRecord):
                record.flush(relay.bytes_up, relay.bytes_down)
        self._timer = asyncio.get_running_loop().call_later(self.flush_interval_s, self._flush)

    # -- shutdown --------------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Cancel pending decisions; let live relays finish for ``grace_s``, then reset them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.live:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), grace_s)
            except TimeoutError:
                log.info("drain deadline: resetting %d connections", len(self.live))
                for relay in list(self.live):
                    relay.abort()
        # aborted transports report connection_lost on the next loop turns
        for _ in range(10):
            if not self.live:
                break
            await asyncio.sleep(0)
        for relay in list(self.live):  # sides that never report (no transport any more)
            self._relay_done(relay)
