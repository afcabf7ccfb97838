"""Real loopback backends and a proxy harness for the L7 engine tests.

The backend is a small asyncio HTTP/1.1 server (httptools) that records what it saw and never
keeps a large body in memory (it counts bytes), so memory measurements see only the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from tests.support.apps import HttpApp, write_chunked
from waypoint.l7.chain import FilterChain
from waypoint.l7.endpoints import RoundRobinPicker
from waypoint.l7.filter import DownstreamInfo, Filter
from waypoint.l7.h1_server import server_protocol_factory
from waypoint.l7.pool import UpstreamPool
from waypoint.l7.router import DialledServiceResolver, Router, RouteResolver
from waypoint.l7.routing.decision import DecisionKind, RequestView, RouteDecision, ServiceRef
from waypoint.l7.upstream import TcpConnector, UpstreamTarget

SVC = ServiceRef("default", "echo", 80)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_len: int
    body: bytes


@dataclass
class Backend:
    name: str
    server: asyncio.Server | None = None
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def target(self) -> UpstreamTarget:
        return UpstreamTarget("127.0.4.2", self.port, SVC)


class _BackendProtocol(HttpApp):
    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.b = backend
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.b.connections += 1

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.body = []

    def on_headers_complete(self) -> None:
        if self.headers.get("expect", "").lower() == "100-continue":
            self.t.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self.n <= 1 << 20:
            self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.decode()
        body = b"".join(self.body) if self.n <= 1 << 20 else b""
        self.b.seen.append(Seen(self.parser.get_method().decode(), path, self.headers, self.n, body))
        self.b.hits[path] = self.b.hits.get(path, 0) + 1
        self.respond(path, body)

    def respond(self, path: str, body: bytes) -> None:
        name = self.b.name.encode()
        if path.startswith("/slow"):
            return  # never answers: for timeouts
        if path.startswith("/download/"):
            asyncio.get_running_loop().create_task(self.download(int(path.rsplit("/", 1)[1])))
            return
        if path.startswith("/flaky") and self.b.hits[path] == 1:
            self.t.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nflak")
            return
        if self.parser.get_method() == b"HEAD":
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n")
            return
        if path.startswith("/trailers"):
            self.t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n")
            return
        if path.startswith("/untilclose"):
            self.t.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nstreamed-until-close")
            self.t.close()
            return
        if path.startswith("/reset-early"):
            self.t.close()
            return
        if path.startswith("/reset-mid"):
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-ten..")
            self.t.close()
            return
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self.t.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
            return
        extra = b"connection: close\r\n" if path.startswith("/close") else b""
        out = body if body else b"count=%d" % self.n if self.n else b"hello from " + name
        self.t.write(
            b"HTTP/1.1 200 OK\r\nx-backend: %s\r\ncontent-length: %d\r\n%s\r\n%s" % (name, len(out), extra, out)
        )
        if extra:
            self.t.close()

    async def download(self, total: int) -> None:
        """A chunked response of ``total`` bytes, written with backpressure."""
        self.t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await write_chunked(self.t, total, b"x" * 65536)


async def start_backend(name: str = "b1", host: str = "127.0.4.2") -> Backend:
    backend = Backend(name)
    loop = asyncio.get_running_loop()
    backend.server = await loop.create_server(lambda: _BackendProtocol(backend), host, 0)
    backend.port = backend.server.sockets[0].getsockname()[1]
    return backend


class FixedResolver:
    """Always the same decision (a stand-in for the route table)."""

    def __init__(self, decision: RouteDecision) -> None:
        self.decision = decision

    def resolve(self, view: RequestView) -> RouteDecision:
        return self.decision


def forward(**kw: object) -> RouteDecision:
    return RouteDecision(DecisionKind.FORWARD, backend=SVC, **kw)  # type: ignore[arg-type]


@dataclass
class Proxy:
    port: int
    pool: UpstreamPool
    router: Router
    server: asyncio.Server

    @property
    def url(self) -> str:
        return f"http://127.0.4.1:{self.port}"


@contextlib.asynccontextmanager
async def run_proxy(
    endpoints: Mapping[ServiceRef, Sequence[UpstreamTarget]],
    filters: Sequence[Filter] = (),
    resolver: RouteResolver | None = None,
    info: DownstreamInfo | None = None,
) -> AsyncIterator[Proxy]:
    pool = UpstreamPool(TcpConnector(), connect_timeout_s=2.0)
    router = Router(resolver or DialledServiceResolver(), RoundRobinPicker(lambda s: endpoints.get(s, ())), pool)
    chain = FilterChain(filters, router)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        server_protocol_factory(chain, info or DownstreamInfo(dialled=SVC)), "127.0.4.1", 0
    )
    proxy = Proxy(server.sockets[0].getsockname()[1], pool, router, server)
    try:
        yield proxy
    finally:
        server.close()
        pool.close()
