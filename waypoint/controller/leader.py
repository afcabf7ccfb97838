"""The asyncio edge of leader election: GET, then create or conditional PUT, the Lease, every retry
period; the decisions are :class:`~waypoint.controller.lease.Elector`'s.

What the controller needs is a :class:`LeaderGate`: wait until leading, wait until not. As istiod
(``pilot/pkg/leaderelection/leaderelection.go``), losing the Lease only stops the leader's work, and
the candidate campaigns again at once; watches and readiness are untouched (every replica stays
ready, only the leader writes). A round that hangs is cut at the renew deadline, so a leader whose
API server went silent stops on time. On a clean stop the Lease is released (holder "", client-go
``ReleaseOnCancel``) after the work has stopped, so a rolling update hands over without a 15 s gap.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from waypoint.controller.lease import JITTER_FACTOR, Elector, LeaseConfig, Step, micro_time
from waypoint.mesh.kubeapi.client import ApiError, KubeClient
from waypoint.mesh.kubeapi.resources import Resource

log = logging.getLogger(__name__)

LEASES = Resource("Lease", "leases", "coordination.k8s.io")


class LeaderGate(Protocol):
    """When this replica may write."""

    async def acquired(self) -> None:
        """Return once leading."""

    async def lost(self) -> None:
        """Return once not leading."""


class AlwaysLeader:
    """The gate without election (``--leader-elect=false``): always leading, never lost."""

    async def acquired(self) -> None:
        return

    async def lost(self) -> None:
        await asyncio.get_running_loop().create_future()  # never


def wall_stamp() -> str:
    return micro_time(datetime.datetime.now(datetime.UTC))


class LeaseLeader:
    """Campaigns for, and renews, one Lease until cancelled. ``run()`` is the task; the gate methods
    are for the controller."""

    def __init__(
        self,
        client: KubeClient,
        config: LeaseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        stamp: Callable[[], str] = wall_stamp,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.config = config
        self.elector = Elector(config)
        self._clock = clock
        self._stamp = stamp
        self._jitter = jitter
        self._leading = asyncio.Event()
        self._not_leading = asyncio.Event()
        self._not_leading.set()
        self.transitions = 0  # times this replica became leader (for tests and logs)

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def acquired(self) -> None:
        await self._leading.wait()

    async def lost(self) -> None:
        await self._not_leading.wait()

    async def run(self) -> None:
        """Until cancelled: one round per retry period (jittered while campaigning, as client-go's
        ``acquire``); a leader also wakes at its renew deadline to step down on time."""
        log.info("leader election: %s/%s as %s", self.config.namespace, self.config.name, self.config.identity)
        try:
            while True:
                await self._round()
                await asyncio.sleep(self._pause())
        finally:
            self._publish(False)

    async def release(self) -> None:
        """Give the Lease up if we hold it: call after the work has stopped, before exiting."""
        self._publish(False)
        try:
            lease = await self.client.get(LEASES, self.config.namespace, self.config.name)
            body = None if lease is None else self.elector.release(lease, self._stamp())
            if body is not None:
                await self.client.replace(LEASES, body)
                log.info("leader election: released %s/%s", self.config.namespace, self.config.name)
        except (ApiError, httpx.HTTPError) as e:
            log.warning("leader election: could not release the lease: %s", e)

    async def _round(self) -> None:
        now = self._clock()
        deadline = self.elector.deadline()
        budget = self.config.renew_deadline_s if deadline is None else max(deadline - now, 0.0)
        try:
            async with asyncio.timeout(budget):
                step = await self._try(now)
        except (ApiError, httpx.HTTPError, TimeoutError) as e:
            self.elector.failed(self._clock())
            conflict = isinstance(e, ApiError) and e.status == 409
            log.log(logging.DEBUG if conflict else logging.WARNING, "leader election round failed: %s", e or "timeout")
        else:
            if step.action == "lost":
                log.warning("leader election: lease taken by %s; stopping", step.holder)
        self._publish(self.elector.leading(self._clock()))

    async def _try(self, now: float) -> Step:
        lease = await self.client.get(LEASES, self.config.namespace, self.config.name)
        step = self.elector.plan(lease, now, self._stamp())
        if step.lease is None:
            return step
        if step.action == "create":
            stored = await self.client.create(LEASES, step.lease)
        else:
            stored = await self.client.replace(LEASES, step.lease)
        self.elector.wrote(stored)
        return step

    def _pause(self) -> float:
        retry = self.config.retry_period_s
        deadline = self.elector.deadline()
        if deadline is None:
            return retry * (1 + JITTER_FACTOR * self._jitter())  # wait.JitterUntil(retry, JitterFactor)
        return max(0.0, min(retry, deadline - self._clock()))

    def _publish(self, leading: bool) -> None:
        if leading == self._leading.is_set():
            return
        if leading:
            self.transitions += 1
            log.info("leader election: leading %s/%s", self.config.namespace, self.config.name)
            self._not_leading.clear()
            self._leading.set()
        else:
            if self.transitions:
                log.warning("leader election: stopped leading %s/%s", self.config.namespace, self.config.name)
            self._leading.clear()
            self._not_leading.set()
