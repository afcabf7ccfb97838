"""End to end over loopback: httpx → proxy (Http1ServerProtocol) → recording backend."""

from __future__ import annotations

import httpx

from tests.l7.helpers import SVC, run_proxy, start_backend


async def test_get_is_proxied_and_connection_reused() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as client:
        for i in range(10):
            r = await client.get(f"{proxy.url}/hello/{i}", headers={"x-test": "1"})
            assert r.status_code == 200
            assert r.text == "hello from b1"
            assert r.headers["x-backend"] == "b1"
        assert [s.path for s in backend.seen] == [f"/hello/{i}" for i in range(10)]
        assert backend.seen[0].headers["x-test"] == "1"
        assert backend.seen[0].headers["host"] == f"127.0.4.1:{proxy.port}"
        assert backend.connections == 1  # keep-alive reuse of one pooled upstream connection
        assert proxy.pool.opened == 1


async def test_post_body_with_content_length() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}) as proxy, httpx.AsyncClient(trust_env=False) as client:
        r = await client.post(f"{proxy.url}/echo", content=b"abc" * 1000)
        assert r.status_code == 200
        assert r.content == b"abc" * 1000
        assert backend.seen[0].headers["content-length"] == "3000"
