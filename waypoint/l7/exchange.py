"""One request's trip to an endpoint: attempts, retries, timeouts and the replies Envoy gives.

Created by the router for every forwarded request. On the fast path (an idle pooled connection)
everything is a synchronous callback; a Task appears only to open a new connection. Request
events that arrive while connecting wait in ``_pending`` (the downstream is paused past a limit).
With a retry policy, events are also kept in ``_replay`` while they stay under the replay limit, so
another attempt can resend them (Envoy gives up retrying once its request buffer overflows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from waypoint.l7.filter import LocalReply, RequestContext
from waypoint.l7.flow import PEER_FULL, CorkedWriter, RelayPeer
from waypoint.l7.message import DATA, HeaderList, RequestHead, ResponseHead, apply_mutation
from waypoint.l7.mirror import MirrorExchange
from waypoint.l7.response_flags import NO_HEALTHY_UPSTREAM as UH
from waypoint.l7.response_flags import UPSTREAM_REQUEST_TIMEOUT, UPSTREAM_RETRY_LIMIT_EXCEEDED, add_flag, reset_flag
from waypoint.l7.routing.decision import RouteDecision
from waypoint.l7.upstream import UpstreamConnection, UpstreamTarget

if TYPE_CHECKING:
    from waypoint.l7.chain import Stream
    from waypoint.l7.router import Router

# Envoy's local reply bodies (source/common/router/router.cc).
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
UPSTREAM_TIMEOUT = b"upstream request timeout"
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. "


def reset_reply(reason: str, retried: bool) -> LocalReply:
    """503 for a connection that failed or reset before response headers, worded as Envoy does."""
    if retried:
        text = f"{RESET_BEFORE_HEADERS}retried and the latest reset reason: {reason}"
    else:
        text = f"{RESET_BEFORE_HEADERS}reset reason: {reason}"
    return LocalReply(503, text.encode(), details="upstream_reset_before_response_started")


class UpstreamExchange:
    """Implements the connection's ``ResponseHandler`` for the request it carries."""

    __slots__ = (
        "_backend_timer",
        "_pending",
        "_pending_bytes",
        "_relayed",
        "_replay",
        "_replay_bytes",
        "_request_timer",
        "_retried",
        "_retries_left",
        "conn",
        "ctx",
        "decision",
        "downstream_writer",
        "finished",
        "head",
        "mirrors",
        "request_done",
        "response_started",
        "router",
        "stream",
        "target",
    )

    def __init__(
        self,
        router: Router,
        ctx: RequestContext,
        head: RequestHead,
        end_stream: bool,
        target: UpstreamTarget,
        decision: RouteDecision,
    ) -> None:
        self.router = router
        self.ctx = ctx
        stream = ctx.stream
        assert stream is not None
        self.stream: Stream = stream
        # corked while a read from the endpoint is parsed, so one read leaves in one write
        self.downstream_writer: CorkedWriter | None = getattr(stream.sink, "writer", None)
        self.head = head
        self.target = target
        self.decision = decision
        self.conn: UpstreamConnection | None = None
        self.request_done = end_stream
        self.response_started = False
        self.finished = False
        self.mirrors: Sequence[MirrorExchange] = ()  # the router sets them when the route has any
        self._pending: list[tuple[int, Any, bool]] = []
        self._pending_bytes = 0
        retry = decision.retry
        self._retries_left = retry.attempts if retry is not None else 0
        self._replay: list[tuple[int, Any, bool]] | None = [] if self._retries_left > 0 else None
        self._replay_bytes = 0
        self._retried = False
        self._relayed = False  # after a 101 the byte relay owns the connection, not this exchange
        self._request_timer: asyncio.TimerHandle | None = None
        self._backend_timer: asyncio.TimerHandle | None = None

    # ---- attempts ----
    def start(self) -> None:
        conn = self.router.pool.take_idle(self.target)
        if conn is not None:
            self._attach(conn, in_read=True)
        else:
            asyncio.get_running_loop().create_task(self._connect(self.target))
        d = self.decision
        if self.request_done and (d.request_timeout_s is not None or d.backend_timeout_s is not None):
            self._arm_timers()

    async def _connect(self, target: UpstreamTarget) -> None:
        try:
            conn = await self.router.pool.connect(target)
        except (OSError, TimeoutError) as exc:
            if not self.finished:
                reason = f"remote connection failure, transport failure reason: {exc or type(exc).__name__}"
                self._attempt_failed(reason)
            return
        if self.finished or target is not self.target:
            self.router.pool.release(conn)
            return
        self._attach(conn, in_read=False)

    def _attach(self, conn: UpstreamConnection, in_read: bool) -> None:
        self.conn = conn
        self.stream.response_flow = conn
        writer = conn.writer
        assert writer is not None
        if in_read:
            self.stream.sink.flush_later(writer)  # head and body leave together after this read
        else:
            writer.cork()
        pending = self._pending
        conn.send_request_head(self, self.head, self.request_done and not pending)
        if pending:
            self._pending = []
            self._pending_bytes = 0
            for kind, payload, end in pending:
                if kind == DATA:
                    conn.send_request_data(payload, end)
                else:
                    conn.send_request_trailers(payload)
            self.stream.sink.resume_request_body(PEER_FULL)
        if not in_read:
            writer.uncork()

    def _attempt_failed(self, reason: str) -> None:
        """Connect failure or reset before headers: retry if allowed, else 503."""
        if self._can_retry():
            self._retry()
            return
        add_flag(self.ctx, reset_flag(reason))
        if self._retried and self._retries_left == 0:  # Envoy: RetryStatus::NoRetryLimitExceeded
            add_flag(self.ctx, UPSTREAM_RETRY_LIMIT_EXCEEDED)
        self._finish(release=False)
        self.stream.reply_from_router(reset_reply(reason, self._retried))

    def _can_retry(self) -> bool:
        return self._retries_left > 0 and self._replay is not None and not self.response_started

    def _retry(self) -> None:
        """Abandon this attempt and start the next after the backoff (Envoy: default base 25 ms)."""
        self._retries_left -= 1
        self._retried = True
        conn, self.conn = self.conn, None
        self.stream.response_flow = None
        if conn is not None:
            conn.close()
        if self._backend_timer is not None:
            self._backend_timer.cancel()
            self._backend_timer = None
        retry = self.decision.retry
        backoff = retry.backoff_s if retry is not None and retry.backoff_s is not None else 0.025
        asyncio.get_running_loop().call_later(backoff, self._next_attempt)

    def _next_attempt(self) -> None:
        if self.finished:
            return
        replay = self._replay or []
        self._pending = list(replay)
        target = self.router.repick(self)
        if target is None:
            add_flag(self.ctx, UH)
            self._finish(release=False)
            self.stream.reply_from_router(LocalReply(503, NO_HEALTHY_UPSTREAM))
            return
        self.target = target
        asyncio.get_running_loop().create_task(self._connect(target))
        if self.request_done and self.decision.backend_timeout_s:
            self._backend_timer = asyncio.get_running_loop().call_later(
                self.decision.backend_timeout_s, self._on_timeout
            )

    # ---- request events (from the router filter) ----
    def send(self, kind: int, payload: Any, end_stream: bool) -> None:
        if self.finished:
            return
        replay = self._replay
        if replay is not None:
            if kind == DATA:
                self._replay_bytes += len(payload)
            if self._replay_bytes > self.router.replay_limit:
                self._replay = None  # too big to replay: no more retries for this request
            else:
                replay.append((kind, payload, end_stream))
        for m in self.mirrors:
            m.send(kind, payload, end_stream)
        conn = self.conn
        if conn is not None:
            if kind == DATA:
                conn.send_request_data(payload, end_stream)
            else:
                conn.send_request_trailers(payload)
        else:
            self._pending.append((kind, payload, end_stream))
            if kind == DATA:
                self._pending_bytes += len(payload)
                if self._pending_bytes > self.router.pending_limit:
                    self.stream.sink.pause_request_body(PEER_FULL)
        if end_stream:
            self.request_done = True
            self._arm_timers()

    def _arm_timers(self) -> None:
        """Envoy starts the route timeout once the whole request is received (route.timeout docs)."""
        d = self.decision
        if d.request_timeout_s is None and d.backend_timeout_s is None:
            return
        loop = asyncio.get_running_loop()
        if d.request_timeout_s and self._request_timer is None:
            self._request_timer = loop.call_later(d.request_timeout_s, self._on_timeout)
        if d.backend_timeout_s and self._backend_timer is None:
            self._backend_timer = loop.call_later(d.backend_timeout_s, self._on_timeout)

    def _on_timeout(self) -> None:
        if self.finished:
            return
        started = self.response_started
        add_flag(self.ctx, UPSTREAM_REQUEST_TIMEOUT)
        self._finish(release=False)
        if started:
            self.stream.reset()
        else:
            self.stream.reply_from_router(LocalReply(504, UPSTREAM_TIMEOUT, details="upstream_response_timeout"))

    # ---- ResponseHandler ----

    def on_informational(self, head: ResponseHead) -> None:
        self.stream.encode_informational(head)

    def on_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        retry = self.decision.retry
        if retry is not None and head.status in retry.codes:
            if self._can_retry():
                self._retry()
                return
            if self._retried and self._retries_left == 0:  # passed on after the last retry: URX
                add_flag(self.ctx, UPSTREAM_RETRY_LIMIT_EXCEEDED)
        for mutation in self.decision.response_headers:
            apply_mutation(head.headers, mutation)
        self.response_started = True
        if end_stream:
            self._finish(release=True)  # before the stream completes and would abort us
        self.stream.encode_headers(head, end_stream)

    def on_response_data(self, chunk: bytes, end_stream: bool) -> None:
        if end_stream:
            self._finish(release=True)
        self.stream.encode_data(chunk, end_stream)

    def on_response_trailers(self, trailers: HeaderList) -> None:
        self._finish(release=True)
        self.stream.encode_trailers(trailers)

    def on_upgraded(self, head: ResponseHead, upstream: RelayPeer, rest: bytes) -> None:
        conn = self.conn
        self.response_started = True
        self.stream.encode_headers(head, False)
        if conn is None or conn.closed:
            return
        down = self.stream.sink.start_relay(upstream)
        conn.start_relay(down)
        self._relayed = True
        if rest:
            down.relay_write(rest)

    def on_upstream_reset(self, before_headers: bool, reason: str) -> None:
        if self.finished:
            return
        self.conn = None
        if before_headers and not self.response_started:
            self._attempt_failed(reason)
        else:
            add_flag(self.ctx, reset_flag(reason))
            self._finish(release=False)
            self.stream.reset()

    def on_upstream_writable(self, writable: bool) -> None:
        sink = self.stream.sink
        if writable:
            sink.resume_request_body(PEER_FULL)
        else:
            sink.pause_request_body(PEER_FULL)

    # ---- end ----
    def _finish(self, release: bool) -> None:
        """Stop timers and hand the connection back (or close it), once."""
        if self.finished:
            return
        self.finished = True
        if self._request_timer is not None:
            self._request_timer.cancel()
        if self._backend_timer is not None:
            self._backend_timer.cancel()
        conn, self.conn = self.conn, None
        self.stream.response_flow = None
        self.stream.sink.resume_request_body(PEER_FULL)  # the next request must not inherit our pause
        if conn is not None:
            if release:
                self.router.pool.release(conn)
            else:
                conn.close()
        self.router.picker.done(self.target)

    @property
    def relayed(self) -> bool:
        """After a ``101`` the byte relay owns the connection (the exchange never finishes itself)."""
        return self._relayed

    def abort(self) -> None:
        """The downstream stream ended first (reset, or a local reply replaced the response)."""
        if self._relayed:  # upgraded: the relay owns the connection now, and closes it
            self.conn = None
        self._finish(release=False)
