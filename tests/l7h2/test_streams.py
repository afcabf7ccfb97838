"""Stream independence and flow control on the inner HTTP/2 codecs, driven frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.errors import ErrorCodes

from waypoint.l7.h2_session import H2Settings
from waypoint.l7.upstream import UpstreamProtocol

from .support import BACKEND_IP, RawH2Client, hypercorn_backend, start_proxy

pytestmark = pytest.mark.timeout(60)


async def test_client_reset_of_one_stream_leaves_the_others_flowing() -> None:
    async with hypercorn_backend() as backend:
        proxy = await start_proxy(backend, UpstreamProtocol.HTTP2)
        client = await RawH2Client.open(proxy.port)
        try:
            a = client.request("/echo/a", "POST", end_stream=False)
            await client.send_body(a, b"x" * 1000, end_stream=False)
            b = client.request("/echo/b", "POST", end_stream=False)
            await client.send_body(b, b"y" * 1000, end_stream=False)
            client.conn.reset_stream(a, ErrorCodes.CANCEL)
            client.flush()
            await client.send_body(b, b"y" * 1000)
            c = client.request("/stream/20")
            await client.wait(lambda: client.ended(b) and client.ended(c))
            digest = hashlib.sha256(b"y" * 2000).hexdigest()
            assert client.status(b) == 200 and bytes(client.received[b]).decode() == f"POST /echo/b 2000 {digest} "
            assert bytes(client.received[c]) == b"".join(b"chunk-%d;" % i for i in range(20))
            assert client.status(a) is None
            assert proxy.pool.h2.opened == 1  # the upstream connection survived the cancelled stream
        finally:
            await client.close()
            await proxy.close()


class _ResettingBackend(asyncio.Protocol):
    """An h2 server (the ``h2`` library): ``/boom`` sends headers and a partial body, then
    RST_STREAM(INTERNAL_ERROR); any other request is answered with the body length when it ends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.sizes: dict[int, int] = {}
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                sid = int(ev.stream_id or 0)
                self.sizes[sid] = 0
                if dict(ev.headers or [])[b":path"] == b"/boom":
                    self.conn.send_headers(sid, [(b":status", b"200")])
                    self.conn.send_data(sid, b"partial")
                    self.conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            elif isinstance(ev, h2.events.DataReceived):
                sid = int(ev.stream_id or 0)
                self.sizes[sid] = self.sizes.get(sid, 0) + len(ev.data or b"")
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                sid = int(ev.stream_id or 0)
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.send_headers(sid, [(b":status", b"200")])
                    self.conn.send_data(sid, b"%d" % self.sizes.get(sid, 0), end_stream=True)
        self.transport.write(self.conn.data_to_send())


async def test_upstream_reset_of_one_stream_resets_only_that_downstream_stream() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ResettingBackend, BACKEND_IP, 0)
    proxy = await start_proxy(server.sockets[0].getsockname()[1], UpstreamProtocol.HTTP2)
    client = await RawH2Client.open(proxy.port)
    try:
        slow = client.request("/echo/slow", "POST", end_stream=False)
        await client.send_body(slow, b"z" * 100, end_stream=False)
        boom = client.request("/boom")
        await client.wait(lambda: client.ended(boom))
        assert client.status(boom) == 200
        assert client.reset_code(boom) is not None  # headers had left: only a reset can tell
        await client.send_body(slow, b"z" * 100)
        await client.wait(lambda: client.ended(slow))
        assert client.reset_code(slow) is None
        assert bytes(client.received[slow]) == b"200"
        after = client.request("/echo/after")
        await client.wait(lambda: client.ended(after))
        assert client.status(after) == 200
        assert proxy.pool.h2.opened == 1
    finally:
        await client.close()
        await proxy.close()
        server.close()


async def test_large_upload_to_a_stalled_backend_is_held_by_flow_control() -> None:
    """Bounded memory: the proxy grants the client window back only as the upstream takes bytes, so
    with the backend not reading, the client stalls after windows + socket buffers, not the body."""
    total = 40 * 1024 * 1024
    gate = asyncio.Event()
    result: dict[str, str] = {}

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1])
        digest = hashlib.sha256()
        while length:
            chunk = await reader.read(min(length, 1 << 20))
            digest.update(chunk)
            length -= len(chunk)
        result["sha"] = digest.hexdigest()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(backend, BACKEND_IP, 0)
    port = server.sockets[0].getsockname()[1]
    settings = H2Settings(stream_window=256 * 1024, connection_window=1024 * 1024)
    proxy = await start_proxy(port, UpstreamProtocol.HTTP1, settings=settings)
    client = await RawH2Client.open(proxy.port)
    body = bytes(range(256)) * (total // 256)
    try:
        sid = client.request("/upload", "POST", end_stream=False, extra=[("content-length", str(total))])
        sender = asyncio.create_task(client.send_body(sid, body))
        loop = asyncio.get_running_loop()
        last, since, deadline = -1, loop.time(), loop.time() + 20
        while loop.time() - since < 0.3:  # wait until the client's progress stops (flow control holds it)
            assert loop.time() < deadline and not sender.done()
            if client.sent != last:
                last, since = client.sent, loop.time()
            await asyncio.sleep(0.02)
        assert client.sent < 16 * 1024 * 1024, client.sent  # windows + kernel buffers, far below 40 MiB
        gate.set()
        await asyncio.wait_for(sender, 30)
        await client.wait(lambda: client.ended(sid), 30)
        assert client.status(sid) == 200 and bytes(client.received[sid]) == b"ok"
        assert result["sha"] == hashlib.sha256(body).hexdigest()
    finally:
        await client.close()
        await proxy.close()
        server.close()
