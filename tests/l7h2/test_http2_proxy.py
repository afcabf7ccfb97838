"""Inner HTTP/2 end to end: httpx (prior knowledge) → our h2 codec → chain → router → hypercorn."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from waypoint.l7.upstream import UpstreamProtocol

from .support import CLIENT_IP, PROXY_IP, hypercorn_backend, start_proxy

pytestmark = pytest.mark.timeout(60)


def client(port: int) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(http1=False, http2=True, local_address=CLIENT_IP)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{PROXY_IP}:{port}")


@pytest.mark.parametrize("upstream", [UpstreamProtocol.HTTP2, UpstreamProtocol.HTTP1])
async def test_get_and_post_through_h2_downstream(upstream: UpstreamProtocol) -> None:
    async with hypercorn_backend() as backend:
        proxy = await start_proxy(backend, upstream)
        try:
            async with client(proxy.port) as c:
                r = await c.get("/echo/a?x=1", headers={"x-tag": "t1"})
                assert r.http_version == "HTTP/2"
                assert r.status_code == 200
                want_version = "2" if upstream is UpstreamProtocol.HTTP2 else "1.1"
                assert r.headers["x-http-version"] == want_version
                assert r.text == f"GET /echo/a 0 {hashlib.sha256().hexdigest()} t1"
                body = bytes(range(256)) * 1000
                r = await c.post("/echo/b", content=body)
                assert r.text.split()[2:4] == [str(len(body)), hashlib.sha256(body).hexdigest()]
                r = await c.get("/stream/50")
                assert r.content == b"".join(b"chunk-%d;" % i for i in range(50))
        finally:
            await proxy.close()


async def test_hundred_concurrent_streams_share_one_connection_each_way() -> None:
    async with hypercorn_backend() as backend:
        proxy = await start_proxy(backend, UpstreamProtocol.HTTP2)
        try:
            async with client(proxy.port) as c:
                await c.get("/warm")  # one downstream connection; httpx multiplexes the rest on it

                async def one(i: int) -> None:
                    body = b"%d" % i * (i + 1)
                    r = await c.post(f"/echo/{i}", content=body, headers={"x-tag": f"t{i}"})
                    want = f"POST /echo/{i} {len(body)} {hashlib.sha256(body).hexdigest()} t{i}"
                    assert r.status_code == 200 and r.text == want

                await asyncio.gather(*(one(i) for i in range(100)))
            assert proxy.pool.h2.opened == 1  # all 101 requests as streams of one upstream connection
            assert proxy.pool.opened == 0
        finally:
            await proxy.close()


async def test_no_endpoint_is_a_503_local_reply_over_h2() -> None:
    proxy = await start_proxy(None)
    try:
        async with client(proxy.port) as c:
            r = await c.get("/x")
            assert r.status_code == 503
            assert r.text == "no healthy upstream"
    finally:
        await proxy.close()


async def test_http1_downstream_to_h2c_upstream() -> None:
    async with hypercorn_backend() as backend:
        proxy = await start_proxy(backend, UpstreamProtocol.HTTP2, downstream="h1")
        try:
            transport = httpx.AsyncHTTPTransport(local_address=CLIENT_IP)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{PROXY_IP}:{proxy.port}") as c:
                body = b"q" * 70_000
                r = await c.post("/echo/h1", content=body, headers={"x-tag": "h1"})
                assert r.http_version == "HTTP/1.1"
                assert r.headers["x-http-version"] == "2"
                assert r.text == f"POST /echo/h1 {len(body)} {hashlib.sha256(body).hexdigest()} h1"
                r = await c.get("/stream/10")
                assert r.content == b"".join(b"chunk-%d;" % i for i in range(10))
        finally:
            await proxy.close()
