"""Choosing an endpoint of a service: round robin or least request (Envoy's two usual policies).

The set of endpoints comes from an injected lookup (the mesh state in production), read on every
pick so endpoint changes apply to the next request without any notification.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from waypoint.l7.routing.decision import ServiceRef
from waypoint.l7.upstream import UpstreamTarget

EndpointLookup = Callable[[ServiceRef], Sequence[UpstreamTarget]]


class EndpointPicker(Protocol):
    """``pick`` chooses a healthy endpoint or None; ``done`` is called when that request ends."""

    def pick(self, service: ServiceRef) -> UpstreamTarget | None: ...
    def done(self, target: UpstreamTarget) -> None: ...


class RoundRobinPicker:
    """Each service's endpoints in turn."""

    def __init__(self, lookup: EndpointLookup) -> None:
        self._lookup = lookup
        self._next: dict[ServiceRef, int] = {}

    def pick(self, service: ServiceRef) -> UpstreamTarget | None:
        endpoints = self._lookup(service)
        if len(endpoints) < 2:
            return endpoints[0] if endpoints else None
        i = self._next.get(service, 0)
        self._next[service] = i + 1
        return endpoints[i % len(endpoints)]

    def done(self, target: UpstreamTarget) -> None:
        pass


class LeastRequestPicker:
    """Power of two choices on active requests, as Envoy's LEAST_REQUEST (``choice_count`` 2)."""

    def __init__(self, lookup: EndpointLookup, rng: random.Random | None = None) -> None:
        self._lookup = lookup
        self._rng = rng or random.Random()
        self._active: dict[tuple[str, int], int] = {}

    def pick(self, service: ServiceRef) -> UpstreamTarget | None:
        endpoints = self._lookup(service)
        if not endpoints:
            return None
        if len(endpoints) == 1:
            best = endpoints[0]
        else:
            a, b = self._rng.sample(range(len(endpoints)), 2)
            ea, eb = endpoints[a], endpoints[b]
            active = self._active
            best = ea if active.get((ea.address, ea.port), 0) <= active.get((eb.address, eb.port), 0) else eb
        k = (best.address, best.port)
        self._active[k] = self._active.get(k, 0) + 1
        return best

    def done(self, target: UpstreamTarget) -> None:
        k = (target.address, target.port)
        n = self._active.get(k, 0) - 1
        if n > 0:
            self._active[k] = n
        else:
            self._active.pop(k, None)

    def active(self, target: UpstreamTarget) -> int:
        return self._active.get((target.address, target.port), 0)
