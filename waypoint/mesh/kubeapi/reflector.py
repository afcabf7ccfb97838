"""What to do after a list or a watch ends: client-go's reflector policy, without I/O.

client-go ``tools/cache/reflector.go`` (``ListAndWatch``, ``watchHandler``, ``relistResourceVersion``,
``isExpiredError``) is the behaviour matched here:

- list, then watch from the list's resourceVersion, with ``allowWatchBookmarks`` and a server-side
  ``timeoutSeconds`` of 5-10 minutes so no watch hangs forever;
- a watch the server closes cleanly is re-opened at once from the last resourceVersion seen (no
  relist), unless it was a "very short watch" (under a second, no events), which backs off;
- 410 Gone / "too old resource version" (as an HTTP status or an ERROR event) means the history
  we would resume from is compacted: relist, with resourceVersion "" (a consistent read);
- a connection that fails or breaks re-watches from the last resourceVersion after a backoff, so
  nothing that happened meanwhile is missed (the server replays it; KEP-956 "Watch bookmark",
  Summary); any other ERROR event relists after a backoff, as ``ListAndWatch`` returning does;
- 404 on a list is a resource the cluster does not serve (a CRD not installed): logged once by the
  caller and retried rarely, never fatal.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

MIN_WATCH_TIMEOUT_S = 300.0  # client-go minWatchTimeout: each watch asks for 5-10 minutes
SHORT_WATCH_S = 1.0  # client-go watchHandler: "very short watch" threshold
MISSING_RETRY_S = 60.0  # how often a resource that 404s is looked for again (a CRD installed later)


class Backoff:
    """Exponential backoff: ``initial`` doubling up to ``maximum``, with a little jitter so a fleet
    of ztunnels does not reconnect in step after an API server restart. Pure; time is the caller's."""

    def __init__(
        self,
        initial_s: float = 0.5,
        maximum_s: float = 30.0,
        jitter: float = 0.1,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.jitter = jitter
        self._rand = rand
        self._next = initial_s

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the following one."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum_s)
        return delay * (1.0 + self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.initial_s


class WatchEnd(enum.Enum):
    """How a watch stream ended."""

    CLOSED = "closed"  # the server ended the response cleanly (its timeout, an API server restart)
    EXPIRED = "expired"  # 410 Gone: our resourceVersion is older than the server's history
    BROKEN = "broken"  # connect failure, reset, timeout, garbage, 5xx/429 status
    ERROR = "error"  # an ERROR event other than 410


@dataclass(frozen=True, slots=True)
class Next:
    """What the watcher does next: wait ``delay_s``, then relist (or re-watch from where it was)."""

    relist: bool
    delay_s: float


def after_watch(end: WatchEnd, events: int, duration_s: float, backoff: Backoff) -> Next:
    """The step after a watch ends, given how many events it delivered and how long it lasted."""
    if end is WatchEnd.EXPIRED:
        return Next(relist=True, delay_s=0.0)
    if end is WatchEnd.CLOSED:
        if events == 0 and duration_s < SHORT_WATCH_S:
            return Next(relist=False, delay_s=backoff.next())
        backoff.reset()
        return Next(relist=False, delay_s=0.0)
    if events > 0 or duration_s >= SHORT_WATCH_S:  # it worked for a while: start the backoff over
        backoff.reset()
    return Next(relist=end is WatchEnd.ERROR, delay_s=backoff.next())


def list_resource_version(last_synced: str, last_expired: bool) -> str:
    """client-go ``relistResourceVersion``: "0" first (the server's watch cache may answer), the
    last synced version on a relist, and "" (a consistent read) after a 410."""
    if last_expired:
        return ""
    return last_synced or "0"


def watch_timeout_s(rand: Callable[[], float] = random.random) -> int:
    """client-go: ``minWatchTimeout * (rand + 1)``, spread so watches do not all end together."""
    return int(MIN_WATCH_TIMEOUT_S * (rand() + 1.0))
