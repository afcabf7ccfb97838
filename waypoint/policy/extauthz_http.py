"""An ``envoyExtAuthzHttp`` provider: Envoy's raw HTTP authorization check.

What goes out (``source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc``
``RawHttpClientImpl::check`` and ``ClientConfig::toRequestMatchers``): the original method, the
original path behind ``pathPrefix``, no body (``content-length: 0``) unless ``includeRequestBodyInCheck``
buffered one (then the buffered bytes, as-is: ``packAsBytes`` is for gRPC), and of the request's headers
only ``:authority``/host, ``authorization`` and those matching ``includeRequestHeadersInCheck``; then
``includeAdditionalHeadersInCheck`` set over them (Envoy's ``headers_to_add``, overwrite).

What comes back (``RawHttpClientImpl::toResponse``):

- 5xx: an error (the filter applies ``failOpen`` / ``statusOnError``);
- 200: allowed; the response headers matching ``headersToUpstreamOnAllow`` are set on the upstream
  request, the names listed in ``x-envoy-auth-headers-to-remove`` are removed from it, and those
  matching ``headersToDownstreamOnAllow`` (``allowed_client_headers_on_success``) are added to the
  response the client gets (``SuccessResponse``: "appended (using addCopy) to the encoded response
  headers"; the filter leaves out framing and hop-by-hop names);
- anything else: denied with the server's status and body, and its headers to the client: all but
  ``host`` when ``headersToDownstreamOnDeny`` is unset, else those matching it plus ``:status``,
  ``content-length``, ``www-authenticate`` and ``location`` (``toClientMatchers``).

:func:`check_request` and :func:`check_result` are pure; :class:`HttpProviderClient` is the thin
httpx edge (one pooled client per provider, no proxies from the environment).
"""

from __future__ import annotations

import itertools

import httpx

from waypoint.policy.extauthz import CheckInput, CheckResult, CheckStatus, HeaderAction, Headers, error
from waypoint.policy.meshconfig import ExtAuthzProvider, HeaderPatterns

_ALWAYS = frozenset({"authorization", "host"})  # toRequestMatchers' defaults (:method, :path ride the request line)
_CLIENT_DEFAULTS = frozenset({"content-length", "www-authenticate", "location"})
_HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"  # Envoy's EnvoyAuthHeadersToRemove
# the local reply frames its own body (its length); hop-by-hop headers never cross a proxy
_NOT_FORWARDED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def check_request(provider: ExtAuthzProvider, request: CheckInput) -> tuple[str, str, Headers]:
    """(method, path, headers) of the check request; ``host`` carries the original ``:authority``."""
    patterns = provider.request_headers
    body = request.body or b""
    headers: dict[str, str] = {"host": request.authority, "content-length": str(len(body))}
    for name, value in request.headers:
        if name in _ALWAYS or (patterns and patterns.matches(name)):
            if name == "host" or name == "content-length":
                continue
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    for name, value in provider.additional_headers:
        headers[name] = value
    return request.method, provider.path_prefix + request.path, tuple(headers.items())


def check_result(provider: ExtAuthzProvider, status: int, headers: Headers, body: bytes) -> CheckResult:
    """The authorization server's answer, as Envoy reads it (``toResponse``)."""
    if 500 <= status <= 599:
        return error(f"authorization server answered {status}")
    if status == 200:
        return _allowed(provider, headers)
    deny = provider.downstream_on_deny
    client = tuple(
        (k, v) for k, v in headers
        if k not in _NOT_FORWARDED and k != _HEADERS_TO_REMOVE
        and (k != "host" if not deny else (deny.matches(k) or k in _CLIENT_DEFAULTS))
    )
    return CheckResult(CheckStatus.DENIED, status, body, client_headers=client)


def _allowed(provider: ExtAuthzProvider, headers: Headers) -> CheckResult:
    upstream: HeaderPatterns = provider.upstream_on_allow
    downstream: HeaderPatterns = provider.downstream_on_allow
    remove: list[str] = []
    to_set: list[tuple[str, str]] = []
    to_client: list[tuple[str, str, HeaderAction]] = []
    for k, v in headers:
        if k == _HEADERS_TO_REMOVE:
            remove.extend(n.strip().lower() for n in v.split(",") if n.strip())
            continue
        if upstream and upstream.matches(k):
            to_set.append((k, v))
        if downstream and downstream.matches(k):
            to_client.append((k, v, HeaderAction.ADD))
    return CheckResult(CheckStatus.OK, 200, upstream_set=tuple(to_set), upstream_remove=tuple(remove),
                       downstream=tuple(to_client))


class HttpProviderClient:
    """Checks over pooled HTTP/1.1 connections to the provider's addresses, round-robin."""

    def __init__(self, provider: ExtAuthzProvider, targets: tuple[tuple[str, int], ...]) -> None:
        self.provider = provider
        self.targets = targets
        self._next = itertools.cycle(targets) if targets else None
        self._client: httpx.AsyncClient | None = None

    async def check(self, request: CheckInput) -> CheckResult:
        if self._next is None:
            return error(f"no address for service {self.provider.service}")
        ip, port = next(self._next)
        method, path, headers = check_request(self.provider, request)
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, timeout=self.provider.timeout_s)
        host = f"[{ip}]" if ":" in ip else ip
        url = httpx.URL(f"http://{host}:{port}").copy_with(raw_path=path.encode("latin-1"))
        try:
            response = await self._client.request(method, url, headers=list(headers), content=request.body)
        except (httpx.HTTPError, OSError) as e:
            return error(f"{type(e).__name__}: {e}")
        answer = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw)
        return check_result(self.provider, response.status_code, answer, response.content)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
