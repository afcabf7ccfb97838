"""The HTTP edge to the API server: LIST and streaming WATCH over ``httpx`` (off the hot path).

Only this file does network I/O for the Kubernetes source, and it translates failures once:
an error answer becomes :class:`ApiError` (status, reason, message from the ``Status`` body),
any transport failure stays an ``httpx.TransportError``. A watch is one long GET with
``watch=1`` answered by newline-delimited JSON events (API concepts, "Efficient detection of
changes"); a page of a list is at most ``limit`` items, followed with ``continue``
(API concepts, "Retrieving large results sets in chunks"), as client-go's pager does. Writes are
server-side apply (``PATCH`` with ``application/apply-patch+yaml``, a ``fieldManager``, ``force``;
Kubernetes docs, "Server-Side Apply") and ``DELETE``, for ``waypoint controller``; and for its
leader election, ``GET`` of one object, ``POST`` (create) and ``PUT`` (replace, conditional on the
``resourceVersion`` it carries).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping
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

    async def apply(
        self,
        resource: Resource,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = True,
        subresource: str = "",
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` (its own metadata names it) as ``field_manager``; the object as
        stored. ``subresource="status"`` applies to the status only. JSON is YAML, so it goes as JSON."""
        md = obj.get("metadata") or {}
        path = object_path(resource, str(md.get("namespace") or ""), str(md["name"]), subresource)
        params = {"fieldManager": field_manager, **({"force": "true"} if force else {})}
        headers = {**self._auth(), "Content-Type": "application/apply-patch+yaml"}
        response = await self._http.patch(path, params=params, headers=headers, content=json.dumps(obj).encode())
        return _json_or_error(response, ok=(200, 201))

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete one object; False when it was already gone (404)."""
        response = await self._http.delete(object_path(resource, namespace, name), headers=self._auth())
        if response.status_code == 404:
            return False
        _json_or_error(response, ok=(200, 202))
        return True

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """One object as stored, or None when there is none (404)."""
        response = await self._http.get(object_path(resource, namespace, name), headers=self._auth())
        if response.status_code == 404:
            return None
        return _json_or_error(response)

    async def create(self, resource: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``POST`` to the collection: 409 AlreadyExists (``ApiError``) when another wrote it first."""
        md = obj.get("metadata") or {}
        path = object_path(resource, str(md.get("namespace") or ""), "").rstrip("/")
        headers = {**self._auth(), "Content-Type": "application/json"}
        response = await self._http.post(path, headers=headers, content=json.dumps(obj).encode())
        return _json_or_error(response, ok=(200, 201))

    async def replace(self, resource: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT`` the whole object; its ``metadata.resourceVersion`` makes it conditional, so a stale
        one is answered 409 Conflict (API concepts, "Resource versions"; optimistic concurrency)."""
        md = obj.get("metadata") or {}
        path = object_path(resource, str(md.get("namespace") or ""), str(md["name"]))
        headers = {**self._auth(), "Content-Type": "application/json"}
        response = await self._http.put(path, headers=headers, content=json.dumps(obj).encode())
        return _json_or_error(response)

    def _auth(self) -> dict[str, str]:
        token = self._tokens.token()
        return {"Authorization": f"Bearer {token}"} if token else {}


def object_path(resource: Resource, namespace: str, name: str, subresource: str = "") -> str:
    """``/api/v1/namespaces/NS/services/NAME[/status]``; cluster-scoped kinds have no namespace part
    (Kubernetes API concepts, "Resource URIs")."""
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    where = f"/namespaces/{namespace}" if namespace and not resource.cluster_scoped else ""
    tail = f"/{subresource}" if subresource else ""
    return f"{base}{where}/{resource.plural}/{name}{tail}"


def _selector(resource: Resource) -> dict[str, str]:
    return {"fieldSelector": resource.field_selector} if resource.field_selector else {}


def _json_or_error(response: httpx.Response, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The JSON body of a success (200, or the codes in ``ok``), or ``ApiError`` carrying the
    ``Status`` the server answered."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in ok and isinstance(body, dict):
        return body
    if response.status_code in ok:
        raise ApiError(response.status_code, "BadResponse", f"not a JSON object: {response.text[:200]!r}")
    status: dict[str, Any] = body if isinstance(body, dict) else {}
    reason = status.get("reason")
    message = status.get("message")
    raise ApiError(
        response.status_code,
        reason if isinstance(reason, str) else httpx.codes.get_reason_phrase(response.status_code),
        message if isinstance(message, str) else response.text[:200],
    )
