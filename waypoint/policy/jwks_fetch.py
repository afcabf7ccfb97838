"""The keys RequestAuthentication rules verify with: inline ``jwks`` parsed once, ``jwksUri`` fetched
with httpx off the request path, cached and refreshed. This is the one I/O edge of JWT checking.

Istio fetches in istiod by default and hands Envoy the keys inline (``IS:pilot/pkg/model/jwks_resolver.go``
``BuildLocalJwks``/``GetPublicKey``): a key set is fetched when a rule first names its URI, then refreshed
on an interval (``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL``, 20 minutes); a rule with neither ``jwks`` nor
``jwksUri`` finds its URI by OpenID discovery (``<issuer>/.well-known/openid-configuration``,
``jwks_uri``). While no key set could be fetched, istiod gives Envoy a fake one ("to reject a request with
JWT token by using a fake jwks when istiod failed to fetch it"), so tokens of that issuer fail with
"Jwt verification fails": here :meth:`JwksKeys.__call__` answers None and the authenticator fails them
the same way (fail closed). A failed refresh keeps the last good keys, as istiod does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable

import httpx

from waypoint.policy.jwt import Jwks, JwksError, parse_jwks
from waypoint.policy.request_authn import JwtRule

log = logging.getLogger(__name__)

REFRESH_S = 20 * 60.0  # PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default
RETRY_MAX_S = 60.0  # a failed fetch is retried after 1 s, doubling up to this
MAX_BODY = 1 << 20  # a key set larger than 1 MiB is refused (no limit is published; this bounds memory)
_DISCOVERY = "/.well-known/openid-configuration"


def source_of(rule: JwtRule) -> str:
    """Where a rule's keys come from: its ``jwksUri``, else its issuer's discovery document."""
    return rule.jwks_uri or (rule.issuer.rstrip("/") + _DISCOVERY)


class JwksKeys:
    """A :data:`~waypoint.policy.request_authn.KeySource` for one waypoint, fed each snapshot's rules
    with :meth:`want`. Fetching runs on tasks of the running loop; :meth:`aclose` stops them."""

    def __init__(self, *, refresh_s: float = REFRESH_S, retry_max_s: float = RETRY_MAX_S) -> None:
        self.refresh_s = refresh_s
        self.retry_max_s = retry_max_s
        self._inline: dict[str, Jwks] = {}
        self._fetched: dict[str, Jwks] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._attempted: dict[str, asyncio.Event] = {}
        self._pending: dict[str, float] = {}  # wanted before a loop ran: source -> timeout
        self._client: httpx.AsyncClient | None = None
        self.fetch_ok = self.fetch_failed = 0

    def __call__(self, rule: JwtRule) -> Jwks | None:
        if rule.jwks:
            return self._inline.get(rule.jwks)
        return self._fetched.get(source_of(rule))

    def want(self, rules: Iterable[JwtRule]) -> None:
        """The rules now in force: parse new inline sets, start fetching new sources, stop unused ones."""
        inline: dict[str, Jwks] = {}
        sources: dict[str, float] = {}
        for rule in rules:
            if rule.jwks:
                keys = self._inline.get(rule.jwks)
                if keys is None:
                    try:
                        keys = parse_jwks(rule.jwks)
                    except JwksError as e:  # validated at load; kept defensive: no keys = fail closed
                        log.error("RequestAuthentication jwks for issuer %s unusable: %s", rule.issuer, e)
                        continue
                inline[rule.jwks] = keys
            else:
                sources.setdefault(source_of(rule), rule.timeout_s)
        self._inline = inline
        for gone in set(self._tasks) - set(sources):
            self._tasks.pop(gone).cancel()
            self._fetched.pop(gone, None)
            self._attempted.pop(gone, None)
        self._pending = {s: t for s, t in sources.items() if s not in self._tasks}
        self._start_pending()

    def _start_pending(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: start() will
        for source, timeout in self._pending.items():
            self._attempted.setdefault(source, asyncio.Event())
            self._tasks[source] = loop.create_task(self._run(source, timeout))
        self._pending = {}

    def start(self) -> None:
        """Begin fetches wanted before the loop ran."""
        self._start_pending()

    async def attempted(self, source: str) -> None:
        """Return once the first fetch of ``source`` has succeeded or failed (tests, readiness)."""
        event = self._attempted.get(source)
        if event is None:
            raise KeyError(source)
        await event.wait()

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, source: str, timeout_s: float) -> None:
        delay = 1.0
        while True:
            ok = await self._fetch(source, timeout_s)
            self._attempted[source].set()
            if ok:
                delay = 1.0
                await asyncio.sleep(self.refresh_s)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def _fetch(self, source: str, timeout_s: float) -> bool:
        try:
            uri = source
            if source.endswith(_DISCOVERY):
                found = (await self._get(source, timeout_s)).get("jwks_uri")
                if not isinstance(found, str) or not found:
                    raise JwksError("no jwks_uri in the OpenID discovery document")
                uri = found
            text = await self._text(uri, timeout_s)
            self._fetched[source] = parse_jwks(text)
        except (httpx.HTTPError, JwksError, ValueError) as e:
            self.fetch_failed += 1
            if source in self._fetched:
                log.warning("JWKS refresh from %s failed (keeping the last keys): %s", source, e)
            else:
                log.error("JWKS fetch from %s failed: tokens of its issuer are refused until it succeeds: %s",
                          source, e)
            return False
        self.fetch_ok += 1
        return True

    async def _text(self, uri: str, timeout_s: float) -> str:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=True)
        response = await self._client.get(uri, timeout=timeout_s)
        response.raise_for_status()
        if len(response.content) > MAX_BODY:
            raise JwksError(f"key set larger than {MAX_BODY} bytes")
        return response.text

    async def _get(self, uri: str, timeout_s: float) -> dict[str, object]:
        doc = json.loads(await self._text(uri, timeout_s))
        if not isinstance(doc, dict):
            raise JwksError("the OpenID discovery document is not a JSON object")
        return doc
