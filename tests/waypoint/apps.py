"""The pods' apps for the waypoint end-to-end tests, served on their pod addresses.

``EchoApp`` is an HTTP/1.1 server (httptools) that answers with JSON describing what it saw
(path, host, headers, peer), never keeping a large body (it counts and hashes), so memory
measured elsewhere is the proxy's. Special paths stand for misbehaving backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.apps import HttpApp, write_chunked


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_len: int
    peer: str


@dataclass
class EchoApp:
    """One pod's HTTP app. ``seen`` lists every complete request in order."""

    pod: str
    ip: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    server: asyncio.Server | None = None

    async def start(self) -> EchoApp:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _EchoProtocol(self), self.ip, self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class _EchoProtocol(HttpApp):
    def __init__(self, app: EchoApp) -> None:
        super().__init__()
        self.app = app
        self.peer = ""
        self.digest = hashlib.sha256()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = transport.get_extra_info("peername")[0]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.digest = hashlib.sha256()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode().lower()
        old = self.headers.get(key)
        self.headers[key] = value.decode() if old is None else f"{old},{value.decode()}"

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self.digest.update(body)

    def on_message_complete(self) -> None:
        path = self.url.decode()
        method = self.parser.get_method().decode()
        app = self.app
        app.seen.append(Seen(method, path, self.headers, self.n, self.peer))
        bare = path.split("?", 1)[0]
        app.hits[bare] = app.hits.get(bare, 0) + 1
        self.respond(method, path, bare)

    def _send(self, status: int, body: bytes, extra: bytes = b"") -> None:
        self.t.write(
            b"HTTP/1.1 %d X\r\nx-pod: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, self.app.pod.encode(), len(body), extra, body)
        )

    def respond(self, method: str, path: str, bare: str) -> None:
        if bare.startswith("/slow"):
            return  # never answers (timeouts)
        if bare.startswith("/reset"):
            self.t.close()
            return
        if bare.startswith("/download/"):
            asyncio.get_running_loop().create_task(self.download(int(bare.rsplit("/", 1)[1])))
            return
        if bare.startswith("/flaky") and self.app.hits[bare] == 1:
            self._send(503, b"flaky")
            return
        if bare.startswith("/status/"):
            self._send(int(bare.rsplit("/", 1)[1]), b"")
            return
        answer = {
            "pod": self.app.pod, "method": method, "path": path, "host": self.headers.get("host"),
            "headers": self.headers, "body_bytes": self.n, "sha256": self.digest.hexdigest(), "peer": self.peer,
        }
        self._send(200, json.dumps(answer).encode())

    async def download(self, total: int) -> None:
        """``total`` bytes, chunked, written with backpressure."""
        self.t.write(b"HTTP/1.1 200 OK\r\nx-pod: %s\r\ntransfer-encoding: chunked\r\n\r\n" % self.app.pod.encode())
        await write_chunked(self.t, total, bytes(range(256)) * 256)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def server_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server-first protocol (SMTP/MySQL style): greets before the client says anything."""
    try:
        writer.write(b"220 server-first ready\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"250 got " + line)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(handler: Handler, ip: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(handler, ip, port)
