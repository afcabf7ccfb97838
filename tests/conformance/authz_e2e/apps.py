"""Pod b-0's apps, on b-0's own address: they know nothing of the mesh and record what reached them.

- 18080, 18085, 8080, 19090: one handler that answers HTTP/1.1 (JSON of what it saw) when the first
  bytes are a request line, else echoes bytes as a TCP app would (8080 is HTTP in one case, TCP in
  another: the case decides the Service port's protocol, the app serves both).
- 17070: gRPC (grpcio) ``proto.EchoTestService/Echo``, the method Istio's echo app serves.

They run on their own event loop in a thread, so the test itself stays synchronous and the
`waypoint dev` process can reach them at any time.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from . import topology

RUN_HEADER = "x-authz-e2e-run"  # tags each request with its run id (no policy looks at it)
GRPC_SERVICE, GRPC_METHOD = "proto.EchoTestService", "Echo"
_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r\n")


@dataclass(frozen=True)
class Seen:
    port: int
    kind: str  # http | tcp | grpc
    run: str  # the run id the request carried
    method: str = ""
    path: str = ""


@dataclass
class PodApps:
    ip: str = topology.B_IP
    seen: list[Seen] = field(default_factory=list)  # appended from the apps' threads, read by the test

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="authz-e2e-apps", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._grpc: grpc.Server | None = None

    def runs_seen(self) -> set[str]:
        return {s.run for s in list(self.seen)}

    def start(self) -> None:
        self._thread.start()
        ports = [p for p, proto in topology.PORTS.items() if proto != "grpc"]
        asyncio.run_coroutine_threadsafe(self._start(ports), self._loop).result(10)
        self._grpc = self._grpc_server()

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
        for server in self._servers:
            self._loop.call_soon_threadsafe(server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self, ports: list[int]) -> None:
        for port in ports:
            self._servers.append(await asyncio.start_server(self._handler(port), self.ip, port))

    def _handler(self, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                first = await reader.read(65536)
                if _REQUEST_LINE.match(first):
                    await self._http(port, first, reader, writer)
                elif first:
                    await self._tcp(port, first, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return handle

    async def _http(self, port: int, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"\r\n\r\n" not in data:
            more = await reader.read(65536)
            if not more:
                return
            data += more
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        self.seen.append(Seen(port, "http", headers.get(RUN_HEADER, ""), method, path))
        body = json.dumps({"pod": "b-0", "port": port, "method": method, "path": path, "headers": headers}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()

    async def _tcp(self, port: int, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.append(Seen(port, "tcp", data.split(b"\n", 1)[0].decode("latin-1")))
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)

    def _grpc_server(self) -> grpc.Server:
        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            run = dict(context.invocation_metadata()).get(RUN_HEADER, "")
            self.seen.append(Seen(17070, "grpc", str(run), "POST", f"/{GRPC_SERVICE}/{GRPC_METHOD}"))
            return request

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(echo, lambda b: b, lambda b: b)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, {GRPC_METHOD: handler}),))
        assert server.add_insecure_port(f"{self.ip}:17070") == 17070, "gRPC app cannot listen on b-0:17070"
        server.start()
        return server
