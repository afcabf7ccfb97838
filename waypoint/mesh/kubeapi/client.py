"""The HTTP edge to the API server: LIST and streaming WATCH over ``httpx`` (off the hot path).

Only this file does network I/O for the Kubernetes source, and it translates failures once:
an error answer becomes :class:`ApiError` (status, reason, message from the ``Status`` body),
any transport failure stays an ``httpx.TransportError``. A watch is one long GET with
``watch=1`` answered by newline-delimited JSON events (API concepts, "Efficient detection of
changes"); a page of a list is at most ``limit`` items, followed with ``continue``
(API concepts, "Retrieving large results sets in chunks"), as client-go's pager does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from waypoint.errors import WaypointError
from waypoint.mesh.kubeapi.config import ClusterConfig, TokenSource
from waypoint.mesh.kubeapi.resources import Resource
from waypoint.mesh.kubeapi.store import WatchEvent, decode_event

LIST_PAGE = 500  # client-go pager's default page size
READ_SLACK_S = 30.0  # a watch asked to end after T seconds is given T + this before we call it dead


class ApiError(WaypointError):
    """A non-2xx answer, with the ``Status`` fields when the server sent one."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeClient:
    """One pooled HTTPS client for every resource's list and watch."""

    def __init__(self, config: ClusterConfig, *, connect_timeout_s: float = 10.0) -> None:
        self.config = config
        self._tokens = TokenSource(config, time.monotonic)
        self._connect_timeout_s = connect_timeout_s
        self._http = httpx.AsyncClient(
            base_url=config.server,
            verify=config.ssl_context(),
            timeout=httpx.Timeout(30.0, connect=connect_timeout_s),
            headers={"Accept": "application/json", "User-Agent": "waypoint"},
            trust_env=False,  # the API server is reached directly, never through HTTP(S)_PROXY
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list(self, resource: Resource, resource_version: str) -> tuple[list[Any], str]:
        """Every object of ``resource`` (all pages) and the list's resourceVersion."""
        items: list[Any] = []
        first: dict[str, str] = {"limit": str(LIST_PAGE), **_selector(resource)}
        if resource_version:
            first["resourceVersion"] = resource_version
        params = first
        while True:
            response = await self._http.get(resource.path, params=params, headers=self._auth())
            body = _json_or_error(response)
            page = body.get("items")
            items.extend(page if isinstance(page, list) else ())
            meta = body.get("metadata")
            md: dict[str, Any] = meta if isinstance(meta, dict) else {}
            token = md.get("continue")
            if not token:
                rv = md.get("resourceVersion")
                return items, rv if isinstance(rv, str) else ""
            params = {"limit": str(LIST_PAGE), "continue": str(token), **_selector(resource)}

    async def watch(
        self, resource: Resource, resource_version: str, timeout_s: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``resource_version`` until the server ends the stream (returns) or it
        breaks (raises). ERROR events are yielded like the rest; the caller decides."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
            **_selector(resource),
        }
        timeout = httpx.Timeout(30.0, connect=self._connect_timeout_s, read=timeout_s + READ_SLACK_S)
        async with self._http.stream(
            "GET", resource.path, params=params, headers=self._auth(), timeout=timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                _json_or_error(response)
            async for line in response.aiter_lines():
                if line.strip():
                    yield decode_event(line)

    def _auth(self) -> dict[str, str]:
        token = self._tokens.token()
        return {"Authorization": f"Bearer {token}"} if token else {}


def _selector(resource: Resource) -> dict[str, str]:
    return {"fieldSelector": resource.field_selector} if resource.field_selector else {}


def _json_or_error(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 200, or ``ApiError`` carrying the ``Status`` the server answered."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict):
        return body
    if response.status_code == 200:
        raise ApiError(200, "BadResponse", f"not a JSON object: {response.text[:200]!r}")
    status: dict[str, Any] = body if isinstance(body, dict) else {}
    reason = status.get("reason")
    message = status.get("message")
    raise ApiError(
        response.status_code,
        reason if isinstance(reason, str) else httpx.codes.get_reason_phrase(response.status_code),
        message if isinstance(message, str) else response.text[:200],
    )
