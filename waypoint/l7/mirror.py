"""Request mirroring (Gateway API RequestMirror, Envoy ``request_mirror_policies``): fire and forget.

A copy of the request goes to another service with ``-shadow`` appended to the host, as Envoy does
(``shadowAppendedHost``); its response is read and thrown away, and nothing about it (slowness,
failure) reaches the client. A mirror that cannot keep up is dropped rather than holding memory.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.message import DATA, HeaderList, RequestHead, ResponseHead
from waypoint.l7.upstream import UpstreamConnection, UpstreamTarget

if TYPE_CHECKING:
    from waypoint.l7.router import Router


def shadow_host(authority: str) -> str:
    """``foo:8080`` → ``foo-shadow:8080``; the suffix goes on the host, before any port."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"


class MirrorExchange:
    """Sends one copy; implements ``ResponseHandler`` to discard the answer."""

    __slots__ = ("_buffered", "_conn", "_dead", "_done_sending", "_head", "_pending", "_router", "_target")

    def __init__(self, router: Router, head: RequestHead, end_stream: bool, target: UpstreamTarget) -> None:
        self._router = router
        self._target = target
        self._head = head.copy()
        self._head.authority = shadow_host(head.authority)
        self._conn: UpstreamConnection | None = None
        self._pending: list[tuple[int, Any, bool]] = []
        self._buffered = 0
        self._dead = False
        self._done_sending = end_stream
        conn = router.pool.take_idle(target)
        if conn is not None:
            self._attach(conn)
        else:
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self._router.pool.connect(self._target)
        except (OSError, TimeoutError):
            self._drop()
            return
        if self._dead:
            conn.close()
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        pending, self._pending = self._pending, []
        conn.send_request_head(self, self._head, self._done_sending and not pending)
        for kind, payload, end in pending:
            if kind == DATA:
                conn.send_request_data(payload, end)
            else:
                conn.send_request_trailers(payload)

    def send(self, kind: int, payload: Any, end_stream: bool) -> None:
        if self._dead:
            return
        conn = self._conn
        if conn is None:
            if kind == DATA:
                self._buffered += len(payload)
                if self._buffered > self._router.replay_limit:
                    self._drop()
                    return
            self._pending.append((kind, payload, end_stream))
        elif kind == DATA:
            if conn.transport is not None and conn.transport.get_write_buffer_size() > self._router.replay_limit:
                self._drop()  # the mirror is slower than the client: give it up
                return
            conn.send_request_data(payload, end_stream)
        else:
            conn.send_request_trailers(payload)
        if end_stream:
            self._done_sending = True

    def _drop(self) -> None:
        self._dead = True
        self._pending = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # ---- ResponseHandler: read and discard ----
    @property
    def downstream_writer(self) -> CorkedWriter | None:
        return None

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        if end_stream:
            self._release()

    def on_response_data(self, chunk: bytes, end_stream: bool) -> None:
        if end_stream:
            self._release()

    def on_response_trailers(self, trailers: HeaderList) -> None:
        self._release()

    def on_upgraded(self, head: ResponseHead, upstream: RelayPeer, rest: bytes) -> None:
        self._drop()

    def on_upstream_reset(self, before_headers: bool, reason: str) -> None:
        self._conn = None
        self._dead = True

    def on_upstream_writable(self, writable: bool) -> None:
        pass

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        self._dead = True
        if conn is not None:
            self._router.pool.release(conn)
