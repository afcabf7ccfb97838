"""The waypoint's access log: one line per finished request (and per opaque TCP tunnel), as Envoy's.

Istio turns Envoy's file access log on from the mesh config (``accessLogFile``) or the Telemetry API
(:mod:`waypoint.policy.telemetry`); the line is formatted by :mod:`waypoint.telemetry.access_log_format`
(Istio's TEXT or JSON defaults, or a custom format). Envoy writes access logs at stream end for every
request whatever answered it, so an RBAC ``403`` shows its ``rbac_access_denied_matched_policy[...]``
details and a ``503`` its ``UH`` flag: we write from ``on_stream_complete``, which the chain calls for
every request.

Values as Envoy's waypoint fills them:

- ``RESPONSE_FLAGS``: the router's flags; ``DC`` when the downstream left before the exchange
  finished (the same rule as :mod:`waypoint.l7.filters.istio_stats`).
- ``RESPONSE_CODE_DETAILS``: a local reply's details (the chain copies ``LocalReply.details`` to the
  context), ``via_upstream`` for an endpoint's response, ``-`` when nothing answered.
- ``BYTES_RECEIVED``/``BYTES_SENT``: body bytes each way, as the chain counted them (a local reply's
  body included).

Writing never blocks the event loop: lines are queued and a writer thread per file
(:class:`LogSink`) writes them in batches, woken at most every ``flush_delay_s`` (Envoy's own file
access log also buffers and flushes on a timer, ``file_flush_interval``). Sinks are shared per path
through an injected :class:`LogSinks`, so several waypoints in one process (``waypoint dev``) write
whole lines to one stdout.

Cost: nothing when no access log is configured (the role leaves the filter out of the chain); else
per request one call here, one per operator of the format, and a deque append.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from waypoint.l4.relay import Relay
from waypoint.l7.filter import DownstreamInfo, Filter, RequestContext
from waypoint.l7.message import RequestHead
from waypoint.l7.response_flags import DOWNSTREAM_CONNECTION_TERMINATION, NONE
from waypoint.l7.upstream import UpstreamTarget
from waypoint.policy.telemetry import AccessLogSpec
from waypoint.telemetry.access_log_format import LineFacts, LineFormat
from waypoint.telemetry.log_expression import Predicate

log = logging.getLogger(__name__)

_STD_FDS = {"/dev/stdout": 1, "/dev/stderr": 2}


class LogSink:
    """One access-log file (or stdout), written by its own thread so the loop never waits on it."""

    def __init__(self, path: str, *, flush_delay_s: float = 0.05, max_pending: int = 100_000) -> None:
        self.path = path
        self.flush_delay_s = flush_delay_s
        self.max_pending = max_pending  # lines queued at most; past it lines are dropped and counted
        self.dropped = 0
        self.written = 0
        self._pending: collections.deque[str] = collections.deque()
        self._armed = False
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one writer at a time: the thread, or flush() from the caller
        self._closed = False
        self._fd = self._open(path)
        self._thread = threading.Thread(target=self._run, name=f"access-log {path}", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: str) -> int | None:
        if path in _STD_FDS:
            return _STD_FDS[path]
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            log.error("access log %s cannot be opened: %s (its lines are dropped)", path, e)
            return None

    def write(self, line: str) -> None:
        """Queue one line (called on the event loop); the thread is woken once per batch."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.dropped += 1
            return
        pending.append(line)
        if not self._armed:
            self._armed = True
            try:
                asyncio.get_running_loop().call_later(self.flush_delay_s, self._kick)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self._kick()

    def _kick(self) -> None:
        self._armed = False
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is queued, now, from the calling thread."""
        with self._lock:
            pending = self._pending
            lines = []
            while pending:
                lines.append(pending.popleft())
            if not lines or self._fd is None:
                return
            data = "".join(lines).encode("utf-8", "replace")
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError as e:
                log.error("access log %s: write failed: %s", self.path, e)
                return
            self.written += len(lines)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5.0)
        self.flush()
        if self._fd is not None and self._fd not in _STD_FDS.values():
            os.close(self._fd)
            self._fd = None


class LogSinks:
    """The process's access-log files by path, shared by every waypoint given the same instance."""

    def __init__(self, flush_delay_s: float = 0.05) -> None:
        self.flush_delay_s = flush_delay_s
        self._sinks: dict[str, LogSink] = {}

    def get(self, path: str) -> LogSink:
        sink = self._sinks.get(path)
        if sink is None:
            sink = self._sinks[path] = LogSink(path, flush_delay_s=self.flush_delay_s)
        return sink

    def flush(self) -> None:
        for sink in self._sinks.values():
            sink.flush()

    def close(self) -> None:
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()


_Log = tuple[LineFormat, Predicate | None, LogSink]


class AccessLog(Filter):
    """Writes the configured access logs at stream end. :meth:`swap` installs a snapshot's logs."""

    name = "access-log"

    def __init__(self, sinks: LogSinks, cluster_domain: str = "cluster.local",
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.sinks = sinks
        self.cluster_domain = cluster_domain
        self.clock = clock  # the codecs' clock (``RequestContext.started_at``)
        self._wall = wall
        self._logs: tuple[_Log, ...] = ()
        self.specs: tuple[AccessLogSpec, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self._logs)

    def swap(self, specs: Sequence[AccessLogSpec]) -> None:
        self.specs = tuple(specs)
        self._logs = tuple((s.format, s.predicate, self.sinks.get(s.path)) for s in specs)

    def on_stream_complete(self, ctx: RequestContext) -> None:
        logs = self._logs
        if not logs:
            return
        facts = self.facts(ctx)
        for fmt, predicate, sink in logs:
            if predicate is None or predicate(ctx, facts):
                sink.write(fmt(ctx, facts))

    def facts(self, ctx: RequestContext) -> LineFacts:
        """What the operators share for this request's line."""
        response = ctx.response
        flags = ctx.response_flags
        upstream = ctx.upstream
        if upstream is not None:
            if flags == NONE and not upstream.finished and not upstream.relayed:
                flags = DOWNSTREAM_CONNECTION_TERMINATION  # the downstream left mid-exchange
        elif response is None and flags == NONE:
            flags = DOWNSTREAM_CONNECTION_TERMINATION
        details = ctx.response_code_details or ("via_upstream" if response is not None else None)
        sent = ctx.response_bytes
        now = self.clock()
        elapsed = now - ctx.started_at
        return LineFacts(response.status if response is not None else 0, flags, details, sent,
                         int(elapsed * 1000), self._wall() - elapsed, self.cluster_domain)

    # ---- opaque TCP through the waypoint (Envoy's tcp_proxy access log: one line at close) ----
    def tcp_connected(self, relay: Relay, info: DownstreamInfo, target: UpstreamTarget, started: float) -> None:
        """The tunnel's upstream is up: log it when the relay ends, with its bytes each way."""
        if not self._logs:
            return
        previous = relay.on_done  # the TCP metrics' close, if any

        def done(r: Relay) -> None:
            if previous is not None:
                previous(r)
            self._tcp_line(info, target, started, NONE, r.bytes_up, r.bytes_down)

        relay.on_done = done

    def tcp_failed(self, info: DownstreamInfo, target: UpstreamTarget | None, started: float, flag: str) -> None:
        """No upstream for the tunnel: ``UH`` (none healthy) or ``UF`` (the dial failed)."""
        if self._logs:
            self._tcp_line(info, target, started, flag, 0, 0)

    def _tcp_line(self, info: DownstreamInfo, target: UpstreamTarget | None, started: float, flags: str,
                  received: int, sent: int) -> None:
        ctx = RequestContext(info, RequestHead("", "", "", []), started)  # no HTTP: those operators print "-"
        ctx.upstream = _Tunnel(target)
        ctx.request_bytes = received
        elapsed = self.clock() - started
        facts = LineFacts(0, flags, None, sent, int(elapsed * 1000), self._wall() - elapsed, self.cluster_domain)
        for fmt, predicate, sink in self._logs:
            if predicate is None or predicate(ctx, facts):
                sink.write(fmt(ctx, facts))


class _Tunnel:
    """What the formatter reads of a tunnel's upstream (``ctx.upstream.target``)."""

    __slots__ = ("target",)

    def __init__(self, target: UpstreamTarget | None) -> None:
        self.target = target

