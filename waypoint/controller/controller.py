"""The asyncio loop of ``waypoint controller``: watch, queue, reconcile, server-side apply. Thin.

As istiod's ``DeploymentController``: Gateways and the kinds it renders are listed and watched (the
mesh source's :class:`~waypoint.mesh.kubeapi.watcher.ResourceWatcher`, so the same reflector
behaviour: relist on 410, backoff on errors); each change queues the Gateway it concerns (a deleted
Deployment queues its owner, so it is made again); nothing is reconciled before every cache has
listed once (``WaitForCacheSync``); a failed reconcile is retried with backoff up to five attempts
(``controllers.WithMaxAttempts(5)``), then waits for the next change. Each rendered object goes by
server-side apply as field manager ``istio.io/gateway-controller`` with ``force`` (istiod's
``patcher``), then the Gateway's ``status`` subresource the same way. A deleted Gateway's objects
are the garbage collector's (their ownerReferences); only its ClusterRoleBinding is deleted here.
The decisions are :mod:`.reconcile`'s; this file only sequences them and does the I/O.

With leader election (:mod:`.leader`), every replica watches and stays ready, but only the leader
reconciles: on becoming leader it queues every Gateway it knows (a new leader resyncs, as istiod's
controllers start afresh under ``LeaderElection.AddRunFunction``); on losing the Lease the work in
flight is cancelled at once, mid-request if need be, and the queue waits for the next term.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Collection
from typing import Any

import httpx

from waypoint.controller.cache import GatewayCache, Name, Observed, OwnedCache
from waypoint.controller.leader import AlwaysLeader, LeaderGate
from waypoint.controller.reconcile import namespace_filter, plan_gateway, stale_bindings
from waypoint.controller.render import GATEWAY_API_VERSION
from waypoint.controller.settings import ControllerSettings
from waypoint.mesh.kubeapi.client import ApiError, KubeClient
from waypoint.mesh.kubeapi.reflector import Backoff
from waypoint.mesh.kubeapi.resources import GATEWAY_API, Resource
from waypoint.mesh.kubeapi.store import ResourceStore
from waypoint.mesh.kubeapi.watcher import ResourceWatcher

log = logging.getLogger(__name__)

FIELD_MANAGER = "istio.io/gateway-controller"  # istiod's features.ManagedGatewayController
MAX_ATTEMPTS = 5
GATEWAYS = Resource("Gateway", "gateways", GATEWAY_API)
OWNED: tuple[Resource, ...] = (
    Resource("ServiceAccount", "serviceaccounts"),
    Resource("ClusterRoleBinding", "clusterrolebindings", "rbac.authorization.k8s.io", cluster_scoped=True),
    Resource("Service", "services"),
    Resource("Deployment", "deployments", "apps"),
)


def utc_now() -> str:
    """RFC 3339 seconds in UTC, as ``metav1.Time`` is written."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WaypointController:
    """Keeps a waypoint Deployment (and its Service, ServiceAccount, binding) for every waypoint Gateway."""

    def __init__(
        self,
        client: KubeClient,
        settings: ControllerSettings,
        *,
        namespaces: Collection[str] = (),
        now: Callable[[], str] = utc_now,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        leader: LeaderGate | None = None,
    ) -> None:
        self.client = client
        self.leader: LeaderGate = leader if leader is not None else AlwaysLeader()
        self.settings = settings
        self.in_scope = namespace_filter(namespaces)
        self.now = now
        self._backoff_s = backoff_s
        self._queue: dict[Name, None] = {}  # an ordered set: each Gateway once, however many changes
        self._attempts: dict[Name, int] = {}
        self._wake = asyncio.Event()
        self.gateways = GatewayCache(GATEWAYS, self._enqueue)
        self.owned = {r.kind: OwnedCache(r, self._enqueue) for r in OWNED}
        stores: list[ResourceStore] = [self.gateways, *self.owned.values()]
        self.watchers = [ResourceWatcher(client, store, self._wake.set, Backoff(*backoff_s)) for store in stores]
        self._resources = {r.kind: r for r in (GATEWAYS, *OWNED)}
        self._tasks: list[asyncio.Task[None]] = []
        self.reconciles = 0  # completed reconciles (for tests and logs)
        self._busy = False

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being reconciled (events still on the wire aside)."""
        return not self._queue and not self._busy

    def pending(self) -> tuple[str, ...]:
        """Resources not listed yet: the readiness endpoint's "not ready, pending: ..."."""
        return tuple(w.resource.display for w in self.watchers if not w.synced.is_set())

    async def run(self) -> None:
        """Until cancelled: keep every watch going; reconcile queued Gateways once all have synced."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(w.run(), name=f"controller-watch-{w.resource.plural}") for w in self.watchers]
        try:
            await asyncio.gather(*(w.synced.wait() for w in self.watchers))
            log.info("caches synced: %d gateways", len(self.gateways.items))
            while True:
                await self.leader.acquired()
                await self._lead(loop)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _lead(self, loop: asyncio.AbstractEventLoop) -> None:
        """One term as leader: reconcile everything, then changes, until the Lease is lost."""
        log.info("leading: reconciling %d gateways", len(self.gateways.items))
        for key in self.gateways.items:
            self._enqueue(key)
        work = loop.create_task(self._work(), name="controller-reconcile")
        lost = loop.create_task(self.leader.lost(), name="controller-leader-lost")
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, lost):
                task.cancel()
            await asyncio.gather(work, lost, return_exceptions=True)
            self._busy = False
        if work.done() and not work.cancelled():
            work.result()  # a crash of the loop surfaces here
        log.warning("not leading: reconciling stopped")

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    def _enqueue(self, key: Name) -> None:
        if self.in_scope(key[0]):
            self._queue[key] = None
            self._wake.set()

    async def _drain(self) -> None:
        self._busy = True
        try:
            await self._drain_queue()
        finally:
            self._busy = False

    async def _drain_queue(self) -> None:
        while self._queue:
            key = next(iter(self._queue))
            del self._queue[key]
            try:
                await self._reconcile(key)
                self._attempts.pop(key, None)
            except (ApiError, httpx.HTTPError) as e:
                self._retry(key, e)
            self.reconciles += 1
        await self._delete_stale_bindings()

    def _retry(self, key: Name, error: Exception) -> None:
        attempt = self._attempts.get(key, 0) + 1
        if attempt >= MAX_ATTEMPTS:
            self._attempts.pop(key, None)
            log.error("gateway %s/%s: giving up after %d attempts (%s); waiting for its next change",
                      *key, attempt, error)
            return
        self._attempts[key] = attempt
        delay = min(self._backoff_s[0] * 2 ** (attempt - 1), self._backoff_s[1])
        log.warning("gateway %s/%s: reconcile failed (%s); retry %d in %.1fs", *key, error, attempt, delay)
        asyncio.get_running_loop().call_later(delay, self._enqueue, key)

    async def _reconcile(self, key: Name) -> None:
        gateway = self.gateways.get(*key)
        if gateway is None:
            return  # deleted: its objects go with it (ownerReferences); bindings in _delete_stale_bindings
        plan = plan_gateway(gateway, self._lookup, self.settings, self.now())
        if plan is None:
            return
        for what in plan.not_ours:
            log.warning("gateway %s/%s: %s exists and is not managed by us; left alone", *key, what)
        for obj in plan.apply:
            await self.client.apply(self._resources[obj["kind"]], obj, field_manager=FIELD_MANAGER)
        if plan.rejection is not None:
            log.warning("gateway %s/%s not accepted (%s): %s", *key, plan.rejection.reason, plan.rejection.message)
        if plan.status is not None:
            await self.client.apply(GATEWAYS, _status_patch(key, plan.status), field_manager=FIELD_MANAGER,
                                    subresource="status")
        log.info("gateway %s/%s reconciled: %d objects applied%s", *key, len(plan.apply),
                 ", status updated" if plan.status is not None else "")

    def _lookup(self, kind: str, namespace: str, name: str) -> Observed | None:
        cache = self.owned.get(kind)
        return cache.get(namespace, name) if cache is not None else None

    async def _delete_stale_bindings(self) -> None:
        bindings = self.owned["ClusterRoleBinding"]
        for name in stale_bindings(self.gateways.items.values(), bindings.items, self.in_scope):
            try:
                await self.client.delete(bindings.resource, "", name)
            except (ApiError, httpx.HTTPError) as e:  # the next change tries again
                log.warning("could not delete ClusterRoleBinding %s: %s", name, e)
                continue
            log.info("deleted ClusterRoleBinding %s: no waypoint Gateway uses it", name)


def _status_patch(key: Name, status: dict[str, Any]) -> dict[str, Any]:
    """The apply body for the status subresource: identity and status, nothing else."""
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway",
            "metadata": {"name": key[1], "namespace": key[0]}, "status": status}
