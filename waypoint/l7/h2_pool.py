"""The pool of upstream HTTP/2 connections, and the pool the router uses for both protocols.

Invariants (stated up front as ztunnel's ``src/proxy/pool.rs`` does):
- a connection is in its endpoint's list from connected until closed;
- streams are handed out on the first connection with room (the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS, capped by ours); another connection is opened only when every
  one is full, as Envoy's HTTP/2 connection pool does;
- callers that arrive while a connection to the same endpoint is being opened wait for it rather
  than open their own (no connection storm on a burst of first requests).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from waypoint.l7 import h2_session as hs
from waypoint.l7.h2_client import H2ClientConnection, H2UpstreamStream
from waypoint.l7.pool import UpstreamPool
from waypoint.l7.upstream import Connector, UpstreamConnection, UpstreamProtocol, UpstreamTarget


class H2Pool:
    """Shared HTTP/2 connections per endpoint; ``take_idle``/``connect`` return a stream on one."""

    def __init__(
        self,
        connector: Connector,
        *,
        settings: hs.H2Settings | None = None,
        connect_timeout_s: float = 10.0,
        max_streams_per_connection: int = 1024,
    ) -> None:
        self._connector = connector
        self._settings = settings
        self._connect_timeout = connect_timeout_s
        self._max_streams = max_streams_per_connection
        self._conns: dict[object, list[H2ClientConnection]] = {}
        self._connecting: dict[object, asyncio.Future[H2ClientConnection]] = {}
        self.opened = 0

    def take_idle(self, target: UpstreamTarget) -> H2UpstreamStream | None:
        """A stream on a connection with room, without waiting, or None."""
        for conn in self._conns.get(target.key, ()):
            if conn.has_capacity:
                return conn.new_stream()
        return None

    async def connect(self, target: UpstreamTarget) -> H2UpstreamStream:
        """A stream once a connection has room: shares a connection being opened, else opens one."""
        key = target.key
        pending = self._connecting.get(key)
        if pending is not None:
            with contextlib.suppress(OSError, TimeoutError):
                conn = await asyncio.shield(pending)
                if conn.has_capacity:
                    return conn.new_stream()
        st = self.take_idle(target)
        if st is not None:
            return st
        fut: asyncio.Future[H2ClientConnection] = asyncio.get_running_loop().create_future()
        self._connecting[key] = fut
        try:
            _, conn = await asyncio.wait_for(
                self._connector.connect(
                    target, lambda: H2ClientConnection(key, self._forget, self._settings, self._max_streams)
                ),
                self._connect_timeout,
            )
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # marked retrieved: only waiters re-raise it
            raise
        finally:
            if self._connecting.get(key) is fut:
                del self._connecting[key]
        self.opened += 1
        self._conns.setdefault(key, []).append(conn)
        fut.set_result(conn)
        return conn.new_stream()

    def release(self, st: H2UpstreamStream) -> None:
        st.release()

    def connections(self, target: UpstreamTarget) -> list[H2ClientConnection]:
        return list(self._conns.get(target.key, ()))

    def _forget(self, conn: H2ClientConnection) -> None:
        conns = self._conns.get(conn.key)
        if conns is not None:
            with contextlib.suppress(ValueError):
                conns.remove(conn)

    def close(self) -> None:
        for conns in self._conns.values():
            for conn in list(conns):
                conn.close()
        self._conns.clear()


class ProtocolPool(UpstreamPool):
    """The router's pool for mixed endpoints: HTTP/1.1 targets as before, h2c/gRPC targets
    (``UpstreamTarget.protocol`` HTTP2) as streams on shared HTTP/2 connections."""

    def __init__(self, connector: Connector, *, h2: H2Pool | None = None, **kwargs: Any) -> None:
        super().__init__(connector, **kwargs)
        self.h2 = h2 or H2Pool(connector)

    def take_idle(self, target: UpstreamTarget) -> UpstreamConnection | None:
        if target.protocol is UpstreamProtocol.HTTP2:
            return self.h2.take_idle(target)
        return super().take_idle(target)

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        if target.protocol is UpstreamProtocol.HTTP2:
            return await self.h2.connect(target)
        return await super().connect(target)

    def release(self, conn: UpstreamConnection) -> None:
        if isinstance(conn, H2UpstreamStream):
            conn.release()
        else:
            super().release(conn)

    def close(self) -> None:
        super().close()
        self.h2.close()
