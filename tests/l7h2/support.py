"""Test plumbing: the proxy composed from the L7 engine's pieces, and independent peers around it.

Proxy: ``Http2ServerProtocol`` (or HTTP/1.1) → ``FilterChain`` → ``Router`` → ``ProtocolPool`` with a
plain TCP connector dialling the backend directly. Backends are independent implementations
(hypercorn for HTTP, grpcio for gRPC); clients too (httpx, grpcio, or the ``h2`` library by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
from hypercorn.asyncio import serve
from hypercorn.config import Config

from waypoint.l7 import h1_server, h2_server
from waypoint.l7.chain import FilterChain
from waypoint.l7.endpoints import RoundRobinPicker
from waypoint.l7.filter import Filter
from waypoint.l7.h2_pool import H2Pool, ProtocolPool
from waypoint.l7.h2_session import H2Settings
from waypoint.l7.router import Router
from waypoint.l7.routing.decision import DecisionKind, RequestView, RouteDecision, ServiceRef
from waypoint.l7.upstream import TcpConnector, UpstreamProtocol, UpstreamTarget

PROXY_IP = "127.0.5.1"
BACKEND_IP = "127.0.5.2"
CLIENT_IP = "127.0.5.3"
SERVICE = ServiceRef("default", "backend", 80)


class StaticResolver:
    """Every request to SERVICE, unless a path prefix maps to a fixed decision."""

    def __init__(self, special: dict[str, RouteDecision] | None = None) -> None:
        self.special = special or {}
        self.forward = RouteDecision(DecisionKind.FORWARD, backend=SERVICE, route_name="test")

    def resolve(self, view: RequestView) -> RouteDecision:
        for prefix, decision in self.special.items():
            if view.path.startswith(prefix):
                return decision
        return self.forward


@dataclass
class Proxy:
    server: asyncio.AbstractServer
    port: int
    pool: ProtocolPool
    endpoints: list[UpstreamTarget]

    async def close(self) -> None:
        self.server.close()
        self.pool.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


async def start_proxy(
    backend_port: int | None,
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP2,
    *,
    downstream: str = "h2",
    resolver: StaticResolver | None = None,
    filters: Sequence[Filter] = (),
    settings: H2Settings | None = None,
    upstream_settings: H2Settings | None = None,
) -> Proxy:
    endpoints = [] if backend_port is None else [UpstreamTarget(BACKEND_IP, backend_port, SERVICE, protocol)]
    connector = TcpConnector()
    pool = ProtocolPool(connector, h2=H2Pool(connector, settings=upstream_settings))
    router = Router(resolver or StaticResolver(), RoundRobinPicker(lambda _s: endpoints), pool)
    chain = FilterChain(list(filters), router)
    factory: Callable[[], asyncio.Protocol]
    if downstream == "h2":
        factory = h2_server.server_protocol_factory(chain, settings=settings)
    else:
        factory = h1_server.server_protocol_factory(chain)
    server = await asyncio.get_running_loop().create_server(factory, PROXY_IP, 0)
    port = server.sockets[0].getsockname()[1]
    return Proxy(server, port, pool, endpoints)


# ---- hypercorn backend (an independent HTTP/1.1 + h2c server) ----
App = Callable[[dict[str, Any], Any, Any], Any]


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/echo`` answers what it received; ``/stream/N`` sends N chunks; ``/gate`` waits on ``scope``."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path: str = scope["path"]
    if path == "/boom":  # a response cut off mid-body: hypercorn resets the stream
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")
    digest = hashlib.sha256()
    size = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body = msg.get("body", b"")
        size += len(body)
        digest.update(body)
        more = msg.get("more_body", False)
    headers = [(b"content-type", b"text/plain"), (b"x-http-version", scope["http_version"].encode())]
    if path.startswith("/stream/"):
        n = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk-%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    req_headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    text = f"{scope['method']} {path} {size} {digest.hexdigest()} {req_headers.get('x-tag', '')}"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


@contextlib.asynccontextmanager
async def hypercorn_backend(app: App = echo_app, host: str = BACKEND_IP, port: int = 0) -> AsyncIterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    config.h2_max_concurrent_streams = 1000
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        await wait_listening(host, port)
        yield port
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        with contextlib.suppress(OSError):
            sock.close()


async def wait_listening(host: str, port: int, deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.01)


# ---- a hand-driven HTTP/2 client (h2 library) for frame-level tests ----
class RawH2Client:
    """Prior-knowledge h2c client on asyncio streams; collects events per stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.events: dict[int, list[h2.events.Event]] = {}
        self.connection_events: list[h2.events.Event] = []
        self.changed = asyncio.Event()
        self.received: dict[int, bytearray] = {}
        self._task: asyncio.Task[None] | None = None
        self.auto_ack = True
        self.sent = 0

    @classmethod
    async def open(cls, port: int) -> RawH2Client:
        reader, writer = await asyncio.open_connection(PROXY_IP, port, local_addr=(CLIENT_IP, 0))
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.flush()
        client._task = asyncio.create_task(client._read())
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.changed.set()
                return
            for ev in self.conn.receive_data(data):
                sid = getattr(ev, "stream_id", None)
                if isinstance(ev, h2.events.DataReceived) and sid is not None:
                    self.received.setdefault(sid, bytearray()).extend(ev.data)
                    if self.auto_ack:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                if sid:
                    self.events.setdefault(sid, []).append(ev)
                else:
                    self.connection_events.append(ev)
            self.flush()
            self.changed.set()

    async def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in self.events.get(sid, ()))

    def reset_code(self, sid: int) -> int | None:
        for e in self.events.get(sid, ()):
            if isinstance(e, h2.events.StreamReset):
                return int(e.error_code or 0)
        return None

    def status(self, sid: int) -> int | None:
        for e in self.events.get(sid, ()):
            if isinstance(e, h2.events.ResponseReceived):
                return int(dict(e.headers or [])[b":status"])
        return None

    def request(
        self, path: str, method: str = "GET", end_stream: bool = True, extra: Sequence[tuple[str, str]] = ()
    ) -> int:
        sid = int(self.conn.get_next_available_stream_id())
        headers = [(":method", method), (":scheme", "http"), (":authority", "backend.default"), (":path", path)]
        self.conn.send_headers(sid, [*headers, *extra], end_stream=end_stream)
        self.flush()
        return sid

    async def send_body(self, sid: int, data: bytes, end_stream: bool = True) -> None:
        """Send ``data`` as the peer's windows allow; ``self.sent`` counts what left."""
        view = memoryview(data)
        off = 0
        while off < len(view):
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.changed.clear()
                await self.changed.wait()
                continue
            chunk = view[off : off + window]
            self.conn.send_data(sid, bytes(chunk))
            off += len(chunk)
            self.sent += len(chunk)
            self.flush()
            await self.writer.drain()
        if end_stream:
            self.conn.end_stream(sid)
            self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.writer.close()
