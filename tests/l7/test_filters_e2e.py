"""Filter contract end to end (Envoy http_filters.rst "Filter ordering"; filter.h stop/continue)."""

from __future__ import annotations

import asyncio

import httpx

from tests.l7.helpers import SVC, run_proxy, start_backend
from tests.support.wait import wait_for
from waypoint.l7.filter import CONTINUE, STOP, Filter, LocalReply, RequestContext, Result
from waypoint.l7.filters.forwarded import Forwarded
from waypoint.l7.filters.headers import HeaderManipulation
from waypoint.l7.filters.request_id import RequestId
from waypoint.l7.message import RequestHead, ResponseHead
from waypoint.l7.routing.decision import HeaderMutation


class Recorder(Filter):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        self.log.append(f"req:{self.name}")
        return CONTINUE

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        self.log.append(f"resp:{self.name}")
        head.headers.append((b"x-seen-by", self.name.encode()))
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        self.log.append(f"done:{self.name}")


class Deny(Filter):
    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        if head.path.startswith("/deny"):
            return LocalReply(403, b"RBAC: access denied", details="rbac_access_denied")
        return CONTINUE


class AsyncCheck(Filter):
    """ext_authz's pattern: stop, decide later on the loop, then resume or deny."""

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        allow = not head.path.startswith("/later-deny")
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: ctx.resume() if allow else ctx.send_local_reply(LocalReply(401, b"nope")))
        return STOP


async def test_request_filters_in_order_response_filters_reversed() -> None:
    backend = await start_backend()
    log: list[str] = []
    filters = [Recorder("A", log), Recorder("B", log), Recorder("C", log)]
    async with run_proxy({SVC: [backend.target]}, filters) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/x")
        assert r.status_code == 200
        await wait_done(log)
    assert log[:6] == ["req:A", "req:B", "req:C", "resp:C", "resp:B", "resp:A"]
    assert r.headers.get_list("x-seen-by") == ["C", "B", "A"]


async def wait_done(log: list[str]) -> None:

    await wait_for(lambda: "done:A" in log)


async def test_local_reply_skips_later_filters_and_backend() -> None:
    backend = await start_backend()
    log: list[str] = []
    filters = [Recorder("A", log), Deny(), Recorder("C", log)]
    async with run_proxy({SVC: [backend.target]}, filters) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/deny")
        assert (r.status_code, r.text) == (403, "RBAC: access denied")
        assert r.headers["content-type"] == "text/plain"
        r2 = await c.get(f"{proxy.url}/ok")  # same keep-alive connection still serves
        assert r2.status_code == 200
    assert "req:C" not in log[: log.index("resp:A")]  # C never saw the denied request
    assert [s.path for s in backend.seen] == ["/ok"]


async def test_stop_then_resume_holds_body_until_resumed() -> None:
    backend = await start_backend()
    async with run_proxy({SVC: [backend.target]}, [AsyncCheck()]) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(f"{proxy.url}/echo", content=b"payload" * 100)
        assert r.status_code == 200
        assert r.content == b"payload" * 100
        r = await c.post(f"{proxy.url}/later-deny", content=b"x")
        assert (r.status_code, r.text) == (401, "nope")
    assert [s.path for s in backend.seen] == ["/echo"]


async def test_header_manipulation_request_and_response() -> None:
    backend = await start_backend()
    f = HeaderManipulation(
        request=HeaderMutation(set=(("x-set", "s"),), add=(("x-add", "a"),), remove=("x-drop",)),
        response=HeaderMutation(set=(("x-backend", "hidden"),), add=(("x-resp", "r"),)),
    )
    async with run_proxy({SVC: [backend.target]}, [f]) as proxy, httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{proxy.url}/h", headers={"x-set": "old", "x-drop": "1"})
    seen = backend.seen[0].headers
    assert seen["x-set"] == "s" and seen["x-add"] == "a" and "x-drop" not in seen
    assert r.headers["x-backend"] == "hidden" and r.headers["x-resp"] == "r"


async def test_request_id_and_forwarded_headers() -> None:
    backend = await start_backend()
    filters = [RequestId(), Forwarded()]
    async with run_proxy({SVC: [backend.target]}, filters) as proxy, httpx.AsyncClient(trust_env=False) as c:
        await c.get(f"{proxy.url}/a")
        await c.get(f"{proxy.url}/b", headers={"x-request-id": "given", "x-forwarded-for": "10.0.0.9"})
    first, second = backend.seen
    assert len(first.headers["x-request-id"]) == 36 and first.headers["x-request-id"][14] == "4"  # UUID4
    assert first.headers["x-forwarded-for"] == "127.0.0.1" or first.headers["x-forwarded-for"].startswith("127.")
    assert first.headers["x-forwarded-proto"] == "http"
    assert second.headers["x-request-id"] == "given"
    assert second.headers["x-forwarded-for"].startswith("10.0.0.9,127.")
