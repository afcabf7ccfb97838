"""Bodies stream chunk by chunk with bounded memory; 100-continue; pipelining; malformed input."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import httpx

from tests.l7.helpers import SVC, run_proxy, start_backend

BIG = 64 * 1024 * 1024


async def _chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"y" * size
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield block if n == size else block[:n]
        sent += n


async def test_chunked_upload_and_download_64mib_stay_bounded() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False, timeout=60) as c:
        tracemalloc.start()
        try:
            r = await c.post(f"{proxy.url}/upload", content=_chunks(BIG))  # no length: chunked
            assert r.status_code == 200 and r.text == f"count={BIG}"
            received = 0
            async with c.stream("GET", f"{proxy.url}/download/{BIG}") as resp:
                assert resp.headers["transfer-encoding"] == "chunked"
                async for part in resp.aiter_raw():
                    received += len(part)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received == BIG
    assert backend.seen[0].headers["transfer-encoding"] == "chunked"
    # client, proxy and backend share this process: all of them together stay far below the body size
    assert peak < 16 * 1024 * 1024, peak


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def test_expect_100_continue_is_passed_through() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy:
        reader, writer = await asyncio.open_connection("127.0.4.1", proxy.port)
        writer.write(b"POST /e HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        writer.write(b"hello")
        head, body = await asyncio.wait_for(_read_response(reader), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"hello"
        writer.close()
    assert backend.seen[0].headers["expect"] == "100-continue"


async def test_pipelined_requests_answered_in_order() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy:
        reader, writer = await asyncio.open_connection("127.0.4.1", proxy.port)
        writer.write(
            b"POST /p1 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\none"
            b"GET /p2 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"POST /p3 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nthree\r\n0\r\n\r\n"
        )
        bodies = [(await asyncio.wait_for(_read_response(reader), 5))[1] for _ in range(3)]
        writer.close()
    assert bodies == [b"one", b"hello from b1", b"three"]


async def test_malformed_request_gets_400_while_other_connection_works() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        assert (await c.get(f"{proxy.url}/before")).status_code == 200
        reader, writer = await asyncio.open_connection("127.0.4.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: a\r\nbad header line\r\n\r\n")
        head, body = await asyncio.wait_for(_read_response(reader), 5)
        assert head.startswith(b"HTTP/1.1 400 Bad Request") and body == b"Bad Request"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # that connection is closed
        writer.close()
        assert (await c.get(f"{proxy.url}/after")).status_code == 200  # the other one is not
    assert [s.path for s in backend.seen] == ["/before", "/after"]


async def test_upstream_connection_close_is_not_reused() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        for _ in range(3):
            assert (await c.get(f"{proxy.url}/close")).status_code == 200
    assert backend.connections == 3
