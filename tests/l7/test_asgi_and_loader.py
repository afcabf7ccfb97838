"""ASGI middleware as a filter, and loading filters by name from the ``waypoint.filters`` group."""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint
from typing import Any

import httpx
import pytest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tests.l7.helpers import SVC, run_proxy, start_backend
from waypoint.errors import ManifestError
from waypoint.l7.asgi import ASGIApp, AsgiFilter, Message, Receive, Scope, Send
from waypoint.l7.filter import Filter
from waypoint.l7.filters.headers import HeaderManipulation
from waypoint.l7.loader import load_filters


class StampResponse:
    """A pure ASGI middleware (starlette style) that adds a response header and a request header."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope, headers=[*scope["headers"], (b"x-asgi-in", self.value)])

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message["headers"], (b"x-asgi-out", self.value)])
            await send(message)

        await self.app(scope, receive, stamped)


async def test_asgi_middleware_answers_locally_or_passes_through() -> None:
    backend = await start_backend()
    filters = [
        AsgiFilter(functools.partial(TrustedHostMiddleware, allowed_hosts=["good.example"]), "trusted-host"),
        AsgiFilter(functools.partial(StampResponse, value="v1"), "stamp"),
    ]
    async with run_proxy({SVC: [backend.target]}, filters) as proxy, httpx.AsyncClient(trust_env=False) as c:
        bad = await c.get(f"{proxy.url}/x", headers={"host": "evil.example"})
        good = await c.post(f"{proxy.url}/y", headers={"host": "good.example"}, content=b"body")
    assert (bad.status_code, bad.text) == (400, "Invalid host header")
    assert good.status_code == 200 and good.content == b"body"
    assert good.headers["x-asgi-out"] == "v1"
    assert [s.path for s in backend.seen] == ["/y"]
    assert backend.seen[0].headers["x-asgi-in"] == "v1"


def make_stamp(config: dict[str, Any]) -> Filter:
    """An entry-point factory of the callable kind."""
    return HeaderManipulation.from_config({"request": {"set": {"x-plugin": config["value"]}}})


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="waypoint.filters")


def test_loader_builds_builtins_and_entry_points_in_order() -> None:
    eps = [
        _ep("stamp", "tests.l7.test_asgi_and_loader:make_stamp"),
        _ep("hm", "waypoint.l7.filters.headers:HeaderManipulation"),
    ]
    filters = load_filters(
        [
            {"name": "request-id"},
            {"name": "stamp", "config": {"value": "p"}},
            {"name": "hm", "config": {"response": {"remove": ["server"]}}},
        ],
        eps,
    )
    assert [f.name for f in filters] == ["request-id", "headers", "headers"]
    assert isinstance(filters[2], HeaderManipulation) and filters[2].response.remove == ("server",)


def test_loader_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ManifestError) as err:
        load_filters([{"name": "forwarded"}, {"name": "nope"}], [_ep("stamp", "x:y")])
    assert err.value.field == "filters[1].name"
    assert "unknown filter 'nope'" in err.value.message and "stamp" in err.value.message


def test_loader_broken_entry_point_names_the_filter() -> None:
    with pytest.raises(ManifestError, match="filter 'bad' could not be built"):
        load_filters([{"name": "bad"}], [_ep("bad", "tests.l7.no_such_module:thing")])
