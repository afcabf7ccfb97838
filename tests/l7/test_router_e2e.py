"""Router behaviours with Envoy's statuses and bodies (source/common/router/router.cc)."""

from __future__ import annotations

import socket

import httpx

from tests.l7.helpers import SVC, FixedResolver, forward, run_proxy, start_backend
from tests.support.wait import wait_for
from waypoint.l7.routing.decision import DecisionKind, HeaderMutation, RetryPolicy, RouteDecision, ServiceRef
from waypoint.l7.upstream import UpstreamTarget

MIRROR = ServiceRef("default", "mirror", 80)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.4.3", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def test_no_endpoint_is_503_no_healthy_upstream() -> None:
    async with run_proxy({}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/")
    assert (r.status_code, r.text) == (503, "no healthy upstream")


async def test_connect_failure_is_503_reset_before_headers() -> None:
    dead = UpstreamTarget("127.0.4.3", closed_port(), SVC)
    async with run_proxy({SVC: [dead]}) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/")
    assert r.status_code == 503
    assert r.text.startswith(  # retried first: Istio's default policy retries connect failures
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
    )


async def test_backend_timeout_is_504() -> None:
    backend = await start_backend()
    resolver = FixedResolver(forward(backend_timeout_s=0.2))
    async with run_proxy({SVC: [backend.target]}, resolver=resolver) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/slow")
        assert (r.status_code, r.text) == (504, "upstream request timeout")
        r = await c.get(f"{proxy.url}/fine")  # the client connection survives a timed-out request
        assert r.status_code == 200


async def test_request_timeout_is_504() -> None:
    backend = await start_backend()
    resolver = FixedResolver(forward(request_timeout_s=0.2))
    async with run_proxy({SVC: [backend.target]}, resolver=resolver) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(f"{proxy.url}/slow", content=b"body")
    assert (r.status_code, r.text) == (504, "upstream request timeout")


async def test_retry_on_5xx_with_replayed_body() -> None:
    backend = await start_backend()
    resolver = FixedResolver(forward(retry=RetryPolicy(attempts=2, codes=(503,), backoff_s=0.001)))
    async with run_proxy({SVC: [backend.target]}, resolver=resolver) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(f"{proxy.url}/flaky", content=b"replay me")
    assert (r.status_code, r.content) == (200, b"replay me")
    assert [s.body for s in backend.seen] == [b"replay me", b"replay me"]


async def test_retry_on_connect_failure_moves_to_next_endpoint() -> None:
    backend = await start_backend()
    dead = UpstreamTarget("127.0.4.3", closed_port(), SVC)
    resolver = FixedResolver(forward(retry=RetryPolicy(attempts=1, codes=(503,), backoff_s=0.001)))
    async with (
        run_proxy({SVC: [dead, backend.target]}, resolver=resolver) as proxy,
        httpx.AsyncClient(trust_env=False) as c,
    ):
        r = await c.get(f"{proxy.url}/x")
    assert r.status_code == 200


async def test_retry_exhausted_passes_the_5xx_through() -> None:
    backend = await start_backend()
    resolver = FixedResolver(forward(retry=RetryPolicy(attempts=1, codes=(500,), backoff_s=0.001)))
    async with run_proxy({SVC: [backend.target]}, resolver=resolver) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/status/500")
    assert r.status_code == 500
    assert backend.hits["/status/500"] == 2


async def test_rewrite_and_route_header_mutations() -> None:
    backend = await start_backend()
    decision = forward(
        new_path="/rewritten?q=1",
        new_authority="svc.example",
        request_headers=(HeaderMutation(add=(("x-route", "r1"),)),),
        response_headers=(HeaderMutation(remove=("x-backend",)),),
    )
    async with (
        run_proxy({SVC: [backend.target]}, resolver=FixedResolver(decision)) as proxy,
        httpx.AsyncClient(trust_env=False) as c,
    ):
        r = await c.get(f"{proxy.url}/orig")
    seen = backend.seen[0]
    assert (seen.path, seen.headers["host"], seen.headers["x-route"]) == ("/rewritten?q=1", "svc.example", "r1")
    assert "x-backend" not in r.headers


async def test_redirect_and_local_decisions() -> None:
    redirect = FixedResolver(RouteDecision(DecisionKind.REDIRECT, status=301, location="http://x.example/new"))
    async with run_proxy({}, resolver=redirect) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/old")
    assert (r.status_code, r.headers["location"], r.content) == (301, "http://x.example/new", b"")
    local = FixedResolver(RouteDecision(DecisionKind.LOCAL, status=404, body=b"route not found"))
    async with run_proxy({}, resolver=local) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/none")
    assert (r.status_code, r.text) == (404, "route not found")


async def test_mirror_gets_a_copy_with_shadow_host() -> None:
    backend = await start_backend("main")
    mirror = await start_backend("mirror", host="127.0.4.4")
    endpoints = {SVC: [backend.target], MIRROR: [UpstreamTarget("127.0.4.4", mirror.port, MIRROR)]}
    resolver = FixedResolver(forward(mirrors=(MIRROR,)))
    async with run_proxy(endpoints, resolver=resolver) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(f"{proxy.url}/m", content=b"copy", headers={"host": "echo.default:80"})
        assert r.headers["x-backend"] == "main"
        await wait_for(lambda: len(mirror.seen) == 1)
    assert mirror.seen[0].body == b"copy"
    assert mirror.seen[0].headers["host"] == "echo.default-shadow:80"
