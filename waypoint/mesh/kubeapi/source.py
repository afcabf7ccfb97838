"""The Kubernetes API server as a mesh source: the same shape as the folder source.

``waypoint ztunnel --kubernetes [KUBECONFIG]`` reads the mesh from the cluster rather than from a
folder ("one model, two sources"). Each resource of :data:`.resources.RESOURCES` that the kind
registry knows is listed and watched by its own :class:`~.watcher.ResourceWatcher`; every object goes
through the same :meth:`KindRegistry.parse` and :func:`~waypoint.mesh.snapshot.assemble` as the
folder's, so a bad object is rejected the same way (reported as ``kubernetes:pods/default/echo-1``,
with its field) and its last good version stays in force.

Changes are coalesced: the first change after a quiet spell opens a window of ``coalesce_s``
(100 ms), and one snapshot is built from everything that arrived by its end, so a rollout of a
hundred pods costs a handful of snapshots, not a hundred.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable

from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry, default_registry
from waypoint.mesh.kubeapi.client import KubeClient
from waypoint.mesh.kubeapi.config import ClusterConfig
from waypoint.mesh.kubeapi.reflector import MISSING_RETRY_S, Backoff
from waypoint.mesh.kubeapi.resources import RESOURCES, Resource, resources_for
from waypoint.mesh.kubeapi.store import ResourceStore
from waypoint.mesh.kubeapi.watcher import ResourceWatcher
from waypoint.mesh.model import ManifestProblem, MeshSnapshot
from waypoint.mesh.snapshot import assemble

log = logging.getLogger(__name__)

OnChange = Callable[[MeshSnapshot], Awaitable[None] | None]


class KubeSource:
    """Mesh config watched from an API server. One owner task; call :meth:`aclose` when done."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        registry: KindRegistry | None = None,
        context: ParseContext | None = None,
        resources: Iterable[Resource] = RESOURCES,
        coalesce_s: float = 0.1,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        missing_retry_s: float = MISSING_RETRY_S,
    ) -> None:
        self.config = config
        self.registry = registry or default_registry()
        self.context = context or ParseContext()
        self.coalesce_s = coalesce_s
        self._client = KubeClient(config)
        self._changed = asyncio.Event()
        self.watchers = [
            ResourceWatcher(
                self._client,
                ResourceStore(r, self.registry, self.context),
                self._changed.set,
                Backoff(*backoff_s),
                missing_retry_s=missing_retry_s,
            )
            for r in resources_for(self.registry, resources)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot = MeshSnapshot()
        self._generation = 0

    @property
    def snapshot(self) -> MeshSnapshot:
        """The current snapshot (empty until the first :meth:`reload`)."""
        return self._snapshot

    @property
    def problems(self) -> tuple[ManifestProblem, ...]:
        """Objects whose current version is rejected (for the admin config dump)."""
        return self._snapshot.problems

    @property
    def unserved(self) -> list[str]:
        """Resources the API server does not serve (CRD not installed) or will not let us read."""
        return [w.resource.display for w in self.watchers if w.unserved is not None]

    async def reload(self, timeout_s: float | None = None) -> MeshSnapshot:
        """Start watching (first call) and wait until every resource has been listed once; then
        build a snapshot. Until the API server answers this waits (retrying with backoff), as a
        node proxy should not serve a mesh it has not read; ``timeout_s`` bounds the wait."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(w.run(), name=f"kube-watch-{w.resource.plural}") for w in self.watchers]
            log.info("watching %s from %s (%s)", ", ".join(w.resource.display for w in self.watchers),
                     self.config.server, self.config.origin or "config")
        await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in self.watchers)), timeout_s)
        self._changed.clear()
        return self._build()

    async def watch(self, on_change: OnChange) -> None:
        """Hand each new snapshot to ``on_change``, one per burst of changes; runs until cancelled."""
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.coalesce_s)  # let the rest of the burst arrive
            self._changed.clear()
            snapshot = self._build()
            try:
                result = on_change(snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("config change handler failed for generation %d", snapshot.generation)

    async def aclose(self) -> None:
        """Stop every watch and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._client.aclose()

    def _build(self) -> MeshSnapshot:
        stores = [w.store for w in self.watchers]
        objects = itertools.chain.from_iterable(s.good.values() for s in stores)
        problems = list(itertools.chain.from_iterable(s.problems.values() for s in stores))
        self._generation += 1
        self._snapshot = assemble(objects, problems, self._generation)
        log.info("config from %s generation %d: %d objects, %d rejected", self.config.server,
                 self._generation, sum(len(s.good) for s in stores), len(problems))
        return self._snapshot
