"""One resource kept in step with the API server: the asyncio loop around the reflector policy.

The decisions (when to relist, how long to wait) are :mod:`.reflector`'s; the bytes are
:mod:`.client`'s; the objects are the :class:`~.store.ResourceStore`'s. This loop only sequences
them, and never gives up: while it reconnects, the store (and so the snapshot) keeps what it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import httpx

from waypoint.mesh.kubeapi.client import ApiError, KubeClient
from waypoint.mesh.kubeapi.reflector import (
    MISSING_RETRY_S,
    Backoff,
    WatchEnd,
    after_watch,
    list_resource_version,
    watch_timeout_s,
)
from waypoint.mesh.kubeapi.store import ResourceStore

log = logging.getLogger(__name__)

# A list answered with one of these will not get better by retrying soon: a CRD not installed
# (404), RBAC not granting the resource (403). The resource counts as synced (empty) so the rest
# of the mesh loads, and it is looked for again every MISSING_RETRY_S.
_UNSERVED = (403, 404)


class ResourceWatcher:
    """List, then watch, one resource into its store; ``on_change`` after each change to the model."""

    def __init__(
        self,
        client: KubeClient,
        store: ResourceStore,
        on_change: Callable[[], None],
        backoff: Backoff,
        *,
        missing_retry_s: float = MISSING_RETRY_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.store = store
        self.resource = store.resource
        self.on_change = on_change
        self.backoff = backoff
        self.missing_retry_s = missing_retry_s
        self._rand = rand
        self.synced = asyncio.Event()  # the first list is in (or the resource is not served)
        self.unserved: int | None = None  # 403/404 while the resource is not served
        self.lists = 0  # successful lists so far (for the config dump and tests)

    async def run(self) -> None:
        """Until cancelled: list, watch until a relist is due, repeat."""
        expired = False
        while True:
            rv = list_resource_version(self.store.resource_version, expired)
            try:
                items, list_rv = await self.client.list(self.resource, rv)
            except ApiError as e:
                expired = await self._list_failed(e)
                continue
            except (httpx.HTTPError, ValueError) as e:
                delay = self.backoff.next()
                log.warning("list %s failed (%s); retrying in %.1fs", self.resource.display, _describe(e), delay)
                await asyncio.sleep(delay)
                continue
            if self.unserved is not None:
                log.info("%s is served now", self.resource.display)
                self.unserved = None
            self.lists += 1
            if self.store.replace(items, list_rv):
                self.on_change()
            self.synced.set()
            log.debug("listed %d %s at resourceVersion %s", len(items), self.resource.display, list_rv)
            expired = await self._watch_until_relist()

    async def _list_failed(self, e: ApiError) -> bool:
        """Handle a list error answer; True when the next list must be a consistent read."""
        if e.status == 410:  # our relist version was compacted away: read the latest instead
            return True
        if e.status in _UNSERVED:
            if self.unserved != e.status:
                log.warning("%s not served (%s): skipped, looked for again every %.0fs",
                            self.resource.display, e, self.missing_retry_s)
            self.unserved = e.status
            # 404: the kind is gone from the cluster, and its objects with it. 403 keeps what we
            # had: losing RBAC must not silently drop, say, every AuthorizationPolicy.
            if e.status == 404 and self.store.replace((), self.store.resource_version):
                self.on_change()
            self.synced.set()
            await asyncio.sleep(self.missing_retry_s)
            return False
        delay = self.backoff.next()
        log.warning("list %s failed (%s); retrying in %.1fs", self.resource.display, e, delay)
        await asyncio.sleep(delay)
        return False

    async def _watch_until_relist(self) -> bool:
        """Watch, re-watching from the last resourceVersion, until a relist is due.
        Returns True when it is due to a 410 (the relist must then be a consistent read)."""
        loop = asyncio.get_running_loop()
        while True:
            started, events = loop.time(), 0
            end, why = WatchEnd.CLOSED, ""
            try:
                stream = self.client.watch(self.resource, self.store.resource_version, watch_timeout_s(self._rand))
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        if event.type == "ERROR":
                            end = WatchEnd.EXPIRED if event.status_code == 410 else WatchEnd.ERROR
                            why = str(event.object.get("message", ""))
                            break
                        events += 1
                        if self.store.apply(event):
                            self.on_change()
            except ApiError as e:
                end, why = (WatchEnd.EXPIRED if e.status == 410 else WatchEnd.BROKEN), str(e)
            except (httpx.HTTPError, ValueError) as e:
                end, why = WatchEnd.BROKEN, _describe(e)
            step = after_watch(end, events, loop.time() - started, self.backoff)
            self._log_end(end, why, step.delay_s, step.relist)
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            if step.relist:
                return end is WatchEnd.EXPIRED

    def _log_end(self, end: WatchEnd, why: str, delay_s: float, relist: bool) -> None:
        then = "relisting" if relist else "watching again"
        after = f" in {delay_s:.1f}s" if delay_s else ""
        if end is WatchEnd.CLOSED:
            log.debug("watch of %s closed by the server; %s%s", self.resource.display, then, after)
        elif end is WatchEnd.EXPIRED:
            log.info("watch of %s expired (%s); %s", self.resource.display, why or "410 Gone", then)
        else:
            log.warning("watch of %s failed (%s); %s from resourceVersion %s%s", self.resource.display, why,
                        then, self.store.resource_version, after)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
