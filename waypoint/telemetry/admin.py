"""Tiny HTTP servers for readiness (15021), Prometheus (15020) and admin (15000).

ztunnel serves these on separate ports (facts §1.1): ``GET /healthz/ready`` (200 once ready,
503 before), ``/metrics`` and ``/stats/prometheus``, and ``/config_dump`` on a localhost-only
admin port. They see a handful of requests a minute, so one GET per connection with
``Connection: close`` is enough and no framework is loaded into the ztunnel role.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
}
_MAX_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Response]
AnyHandler = Callable[[], Response | Awaitable[Response]]  # async: a merged multi-worker scrape


def readiness_routes(pending: Callable[[], Sequence[str]]) -> dict[str, Handler]:
    """``/healthz/ready``: 200 ``ready``, or 503 with ztunnel's body ``not ready, pending: a, b``
    naming what is not up yet (``ZT:src/readiness/server.rs`` ``handle_ready``; ztunnel answers
    500, a kubelet reads both alike)."""

    def ready() -> Response:
        names = pending()
        if not names:
            return Response(200, b"ready\n")
        return Response(503, f"not ready, pending: {', '.join(names)}\n".encode())

    return {"/healthz/ready": ready}


def metrics_routes(registry: CollectorRegistry) -> dict[str, Handler]:
    """``/metrics`` and ``/stats/prometheus``: the text exposition of ``registry``."""

    def scrape() -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return {"/metrics": scrape, "/stats/prometheus": scrape}


def config_dump_routes(dump: Callable[[], object]) -> dict[str, Handler]:
    """``/config_dump``: whatever JSON-able view the role provides."""

    def config_dump() -> Response:
        body = json.dumps(dump(), indent=2, sort_keys=True, default=str).encode()
        return Response(200, body + b"\n", "application/json")

    return {"/config_dump": config_dump}


class HttpEndpoint:
    """A GET-only HTTP/1.x server for a fixed table of paths."""

    def __init__(self, routes: Mapping[str, AnyHandler], name: str = "admin") -> None:
        self.routes = routes
        self.name = name
        self._servers: list[asyncio.Server] = []

    async def listen(self, host: str, port: int) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, host, port)
        self._servers.append(server)
        return server

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def respond(self, method: str, target: str) -> Response | Awaitable[Response]:
        path = target.split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            return Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        return handler()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            request_line = head[: min(len(head), _MAX_HEAD)].split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3:
                response = Response(400, b"bad request\n")
                method = "GET"
            else:
                method = parts[0]
                try:
                    answer = self.respond(method, parts[1])
                    response = await answer if inspect.isawaitable(answer) else answer
                except Exception:  # a broken provider must not take the endpoint down
                    log.exception("%s handler failed for %s", self.name, parts[1])
                    response = Response(503, b"error\n")
            writer.write(_encode(response, with_body=method != "HEAD"))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _encode(response: Response, with_body: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + response.body if with_body else head
