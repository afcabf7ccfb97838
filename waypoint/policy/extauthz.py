"""External authorization (Istio ``CUSTOM`` action): what is asked, what comes back, who answers.

One question, :class:`CheckInput` (the request as Envoy's ``CheckRequestUtils`` sees it), and one
answer, :class:`CheckResult`, shared by both transports: :mod:`.extauthz_http` (Envoy's raw HTTP
check) and :mod:`.extauthz_grpc` (``envoy.service.auth.v3.Authorization/Check``). The three outcomes
are Envoy's ``CheckStatus`` (``source/extensions/filters/common/ext_authz/ext_authz.h``): OK, Denied,
Error; what an Error becomes (``failOpen`` or ``statusOnError``) is the filter's business.

:class:`ExtAuthzClients` holds one client per configured provider, resolved against the mesh:
``service`` is a hostname known to the mesh (its ready endpoints, as Envoy's outbound cluster would
load-balance over them; the VIP when it has none) or an IP. Connections are plain TCP to that
address: in-mesh HBONE to the provider is not done yet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from waypoint.mesh.state import MeshState
from waypoint.policy.meshconfig import ExtAuthzProvider, MeshConfig

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]


class CheckStatus(Enum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CheckInput:
    """The request being authorized. ``headers``: lower-case names in arrival order (pseudo-headers
    not included; the builders add ``:authority``, ``:method``, ``:path``, ``:scheme`` as Envoy does)."""

    method: str
    path: str
    authority: str
    scheme: str
    headers: Headers
    protocol: str = "HTTP/1.1"
    source_address: tuple[str, int] = ("", 0)
    source_principal: str = ""  # the client's SPIFFE URI (its mTLS certificate's URI SAN), "" if none
    destination_address: tuple[str, int] = ("", 0)
    destination_principal: str = ""  # the waypoint's own SPIFFE URI
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Envoy's ``ExtAuthz::Response``: for OK, the upstream header mutations; for Denied, the local
    reply (status, body, headers to the client); for Error, ``reason`` only."""

    status: CheckStatus
    http_status: int = 200
    body: bytes = b""
    client_headers: Headers = ()
    upstream_set: Headers = ()
    upstream_append: Headers = ()
    upstream_remove: tuple[str, ...] = ()
    reason: str = ""


def error(reason: str) -> CheckResult:
    return CheckResult(CheckStatus.ERROR, 0, reason=reason)


class ProviderClient(Protocol):
    """One provider's transport. ``check`` never raises for a provider's failure: it returns Error."""

    provider: ExtAuthzProvider
    targets: tuple[tuple[str, int], ...]

    async def check(self, request: CheckInput) -> CheckResult: ...

    async def aclose(self) -> None: ...


def resolve(provider: ExtAuthzProvider, state: MeshState) -> tuple[tuple[str, int], ...]:
    """Where ``provider.service`` is: an IP, or a mesh Service's ready endpoints (pod IP, target
    port), or its VIP when it has none; empty when the mesh does not know it (checks then fail)."""
    host = provider.hostname
    try:
        return ((str(ipaddress.ip_address(host)), provider.port),)
    except ValueError:
        pass
    service = state.service_by_name(host)
    if service is None:
        return ()
    endpoints = state.endpoints(service, provider.port)
    if endpoints:
        return tuple((e.ip, e.port) for e in endpoints)
    return tuple((vip, provider.port) for vip in service.vips)


def _client_for(provider: ExtAuthzProvider, targets: tuple[tuple[str, int], ...]) -> ProviderClient:
    if provider.kind == "grpc":
        from waypoint.policy.extauthz_grpc import GrpcProviderClient  # grpcio: loaded only when used

        return GrpcProviderClient(provider, targets)
    from waypoint.policy.extauthz_http import HttpProviderClient

    return HttpProviderClient(provider, targets)


class ExtAuthzClients:
    """The providers of the current MeshConfig, by name. :meth:`update` follows a new snapshot and
    keeps a client (and its connections) when neither its provider nor its addresses changed."""

    def __init__(self) -> None:
        self._clients: dict[str, ProviderClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def kinds(self) -> Mapping[str, str]:
        """Provider name -> ``"http"``/``"grpc"`` (what the authorizer needs to know)."""
        return {name: c.provider.kind for name, c in self._clients.items()}

    def get(self, name: str) -> ProviderClient | None:
        return self._clients.get(name)

    def update(self, config: MeshConfig, state: MeshState) -> None:
        fresh: dict[str, ProviderClient] = {}
        for name, provider in config.extension_providers.items():
            targets = resolve(provider, state)
            if not targets:
                log.warning("ext-authz provider %s: service %s is not in the mesh", name, provider.service)
            old = self._clients.get(name)
            if old is not None and old.provider == provider and old.targets == targets:
                fresh[name] = old
                continue
            fresh[name] = _client_for(provider, targets)
            if provider.body is not None or provider.downstream_on_allow:
                log.warning("ext-authz provider %s: includeRequestBodyInCheck and headersToDownstreamOnAllow "
                            "are not supported yet (checks carry no body; no headers added to responses)", name)
        for name, old in self._clients.items():
            if fresh.get(name) is not old:
                self._close_later(old)
        self._clients = fresh

    def _close_later(self, client: ProviderClient) -> None:
        try:
            task = asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:
            return  # no loop (built outside one): nothing was ever connected
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
