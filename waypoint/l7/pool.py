"""The router's own pool of persistent HTTP/1.1 connections, per endpoint.

Invariants (after ztunnel ``src/proxy/pool.rs``, which states its own at the top):
- a connection is either idle in exactly one idle list or owned by exactly one exchange;
- an idle connection has no handler, its last request and response were complete, and it is
  removed from the idle list as soon as it closes;
- the pool never opens a connection without a caller waiting for it (no pre-connect).
Idle connections are taken last-in first-out (the warmest, least likely closed by the server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from waypoint.l7.h1_client import Http1Connection
from waypoint.l7.upstream import Connector, UpstreamConnection, UpstreamTarget


class UpstreamPool:
    """Idle HTTP/1.1 connections by endpoint, and the way to open more through the connector.

    Its callers see only :class:`UpstreamConnection`, so a subclass can also hand out streams on
    shared HTTP/2 connections (``h2_pool.ProtocolPool``)."""

    def __init__(
        self, connector: Connector, *, max_idle_per_endpoint: int = 1024, connect_timeout_s: float = 10.0
    ) -> None:
        self._connector = connector
        self._max_idle = max_idle_per_endpoint
        self._connect_timeout = connect_timeout_s
        self._idle: dict[object, deque[UpstreamConnection]] = {}
        self.opened = 0  # connections opened so far (a counter for tests and metrics)

    def take_idle(self, target: UpstreamTarget) -> UpstreamConnection | None:
        """An idle connection to ``target``, without waiting, or None."""
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        """A new connection to ``target``; raises ``OSError`` or ``TimeoutError``."""
        key = target.key
        _, conn = await asyncio.wait_for(
            self._connector.connect(target, lambda: Http1Connection(key, self._forget)),
            self._connect_timeout,
        )
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Back to idle if it can carry another request, else closed."""
        conn.detach()
        if not conn.reusable:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    def idle_count(self, target: UpstreamTarget) -> int:
        return len(self._idle.get(target.key, ()))

    def _forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
