"""Response framing across the proxy: HEAD, trailers, read-until-close, resets (RFC 9112 §6)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.l7.helpers import SVC, run_proxy, start_backend


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.4.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)  # the requests below ask for connection: close
    finally:
        writer.close()


async def test_head_response_has_no_body_and_connection_is_reused() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.head(f"{proxy.url}/h")
        assert (r.status_code, r.headers["content-length"], r.content) == (200, "11", b"")
        r = await c.get(f"{proxy.url}/g")
        assert r.text == "hello from b1"
    assert backend.connections == 1


async def test_trailers_pass_through_chunked() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy:
        raw = await _exchange(proxy.port, b"GET /trailers HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    assert b"transfer-encoding: chunked" in raw
    assert raw.endswith(b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n")


async def test_read_until_close_response_becomes_chunked() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/untilclose")
        assert (r.status_code, r.text) == (200, "streamed-until-close")
        assert (await c.get(f"{proxy.url}/next")).status_code == 200


async def test_reset_before_headers_is_503_after_istio_default_retries() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/reset-early")
    assert r.status_code == 503
    assert r.text == (  # Envoy's wording once its retries (Istio's default policy: 2) are spent
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
        "connection termination"
    )
    assert backend.hits["/reset-early"] == 3  # the first try and 2 retries


async def test_reset_mid_body_closes_the_client_connection() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(f"{proxy.url}/reset-mid")
        assert (await c.get(f"{proxy.url}/after")).status_code == 200  # a new connection works
