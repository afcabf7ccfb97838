"""External authorization (Istio ``CUSTOM`` action): what is asked, what comes back, who answers.

One question, :class:`CheckInput` (the request as Envoy's ``CheckRequestUtils`` sees it), and one
answer, :class:`CheckResult`, shared by both transports: :mod:`.extauthz_http` (Envoy's raw HTTP
check) and :mod:`.extauthz_grpc` (``envoy.service.auth.v3.Authorization/Check``). The three outcomes
are Envoy's ``CheckStatus`` (``source/extensions/filters/common/ext_authz/ext_authz.h``): OK, Denied,
Error; what an Error becomes (``failOpen`` or ``statusOnError``) is the filter's business.

:class:`ExtAuthzClients` holds one client per configured provider, resolved against the mesh:
``service`` is a hostname known to the mesh (its ready endpoints, as Envoy's outbound cluster would
load-balance over them; the VIP when it has none) or an IP. An endpoint that is an ambient pod is
reached over HBONE with the waypoint's identity, as istiod's outbound cluster for the provider
does (:mod:`.extauthz_forward` says where that is read and how the clients get there); anything
else over plain TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum, IntEnum
from typing import Protocol

from waypoint.l7.upstream import UpstreamTarget
from waypoint.mesh.model import Workload
from waypoint.mesh.state import MeshState
from waypoint.policy.extauthz_forward import Connector, Forwarder
from waypoint.policy.meshconfig import BodySettings, ExtAuthzProvider, MeshConfig

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]


class CheckStatus(Enum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"


class HeaderAction(IntEnum):
    """How an allowed check's header joins the client's response (Envoy ``ExtAuthz::Response``
    ``response_headers_to_add`` / ``_to_set`` / ``_to_add_if_absent`` / ``_to_overwrite_if_exists``).
    The value is the order ``ext_authz.cc`` ``encodeHeaders`` applies the groups in."""

    ADD = 0  # addCopy: another line, beside any the upstream sent
    SET = 1  # setCopy: replaces the upstream's
    ADD_IF_ABSENT = 2
    OVERWRITE_IF_EXISTS = 3


DownstreamHeaders = tuple[tuple[str, str, HeaderAction], ...]


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
    # ``includeRequestBodyInCheck``: the buffered body (None: none was buffered), and for gRPC whether
    # it goes as ``raw_body`` (packAsBytes) rather than ``body``
    body: bytes | None = None
    pack_as_bytes: bool = False


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Envoy's ``ExtAuthz::Response``: for OK, the upstream header mutations and ``downstream``, the
    headers for the response the client will get (name, value, action); for Denied, the local reply
    (status, body, headers to the client); for Error, ``reason`` only."""

    status: CheckStatus
    http_status: int = 200
    body: bytes = b""
    client_headers: Headers = ()
    upstream_set: Headers = ()
    upstream_append: Headers = ()
    upstream_remove: tuple[str, ...] = ()
    downstream: DownstreamHeaders = ()
    reason: str = ""


def error(reason: str) -> CheckResult:
    return CheckResult(CheckStatus.ERROR, 0, reason=reason)


PARTIAL_BODY = "x-envoy-auth-partial-body"  # Envoy's Headers::EnvoyAuthPartialBody


def with_body(request: CheckInput, settings: BodySettings | None) -> CheckInput:
    """The check one provider gets from a request whose body was buffered: its first
    ``maxRequestBytes``, and ``x-envoy-auth-partial-body`` saying whether that is all of it
    (Envoy ``check_request_utils.cc`` ``setHttpRequest``); a provider that wants no body gets none."""
    body = request.body
    if body is None:
        return request
    if settings is None:
        return replace(request, body=None)
    cut = body[: settings.max_request_bytes]
    partial = "true" if len(cut) != len(body) else "false"
    return replace(request, body=cut, pack_as_bytes=settings.pack_as_bytes,
                   headers=(*request.headers, (PARTIAL_BODY, partial)))


class ProviderClient(Protocol):
    """One provider's transport. ``check`` never raises for a provider's failure: it returns Error.
    ``targets``: the addresses it dials (an endpoint, or its loopback forwarder)."""

    provider: ExtAuthzProvider

    @property
    def targets(self) -> tuple[tuple[str, int], ...]: ...

    async def check(self, request: CheckInput) -> CheckResult: ...

    async def aclose(self) -> None: ...


def resolve(provider: ExtAuthzProvider, state: MeshState) -> tuple[UpstreamTarget, ...]:
    """Where ``provider.service`` is: an IP, or a mesh Service's ready endpoints (pod IP, target
    port), or its VIP when it has none; empty when the mesh does not know it (checks then fail).
    An address that is an ambient pod's carries the pod's identity (reached over HBONE)."""
    host = provider.hostname
    try:
        return (_target(state, str(ipaddress.ip_address(host)), provider.port),)
    except ValueError:
        pass
    service = state.service_by_name(host)
    if service is None:
        return ()
    endpoints = state.endpoints(service, provider.port)
    if endpoints:
        return tuple(_target(state, e.ip, e.port, e.workload) for e in endpoints)
    return tuple(UpstreamTarget(vip, provider.port) for vip in service.vips)


def _target(state: MeshState, ip: str, port: int, workload: Workload | None = None) -> UpstreamTarget:
    workload = workload or state.workload_by_ip(ip)
    identity = str(state.identity_of(workload)) if workload is not None and state.is_ambient(workload) else None
    return UpstreamTarget(ip, port, identity=identity, workload=workload)


def _client_for(provider: ExtAuthzProvider, targets: tuple[tuple[str, int], ...]) -> ProviderClient:
    if provider.kind == "grpc":
        from waypoint.policy.extauthz_grpc import GrpcProviderClient  # grpcio: loaded only when used

        return GrpcProviderClient(provider, targets)
    from waypoint.policy.extauthz_http import HttpProviderClient

    return HttpProviderClient(provider, targets)


class _Provider:
    """One provider's client, and the forwarders its in-mesh endpoints are dialled through."""

    def __init__(self, provider: ExtAuthzProvider, upstreams: tuple[UpstreamTarget, ...],
                 connector: Connector | None) -> None:
        self.provider = provider
        self.upstreams = upstreams
        self.forwarders = tuple(Forwarder(connector, t) for t in upstreams
                                if connector is not None and t.identity is not None)
        through = {f.target: f.address for f in self.forwarders}
        self.client = _client_for(provider, tuple(through.get(t, (t.address, t.port)) for t in upstreams))
        self._serving = not self.forwarders

    @property
    def targets(self) -> tuple[tuple[str, int], ...]:
        return self.client.targets

    async def check(self, request: CheckInput) -> CheckResult:
        if not self._serving:  # the first check starts the listeners (built outside a loop, maybe)
            for forwarder in self.forwarders:
                await forwarder.serve()
            self._serving = True
        return await self.client.check(request)

    async def aclose(self) -> None:
        await self.client.aclose()
        for forwarder in self.forwarders:
            await forwarder.aclose()


class ExtAuthzClients:
    """The providers of the current MeshConfig, by name. :meth:`update` follows a new snapshot and
    keeps a client (and its connections) when neither its provider nor its addresses changed.

    ``connector``: the waypoint's (HBONE for ambient pods, TCP otherwise); None: every endpoint is
    dialled directly over TCP (a process with no mesh identity)."""

    def __init__(self, connector: Connector | None = None) -> None:
        self._connector = connector
        self._clients: dict[str, _Provider] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def kinds(self) -> Mapping[str, str]:
        """Provider name -> ``"http"``/``"grpc"`` (what the authorizer needs to know)."""
        return {name: c.provider.kind for name, c in self._clients.items()}

    def get(self, name: str) -> ProviderClient | None:
        return self._clients.get(name)

    def update(self, config: MeshConfig, state: MeshState) -> None:
        fresh: dict[str, _Provider] = {}
        for name, provider in config.extension_providers.items():
            upstreams = resolve(provider, state)
            if not upstreams:
                log.warning("ext-authz provider %s: service %s is not in the mesh", name, provider.service)
            old = self._clients.get(name)
            if old is not None and old.provider == provider and old.upstreams == upstreams:
                fresh[name] = old
                continue
            fresh[name] = _Provider(provider, upstreams, self._connector)
        for name, old in self._clients.items():
            if fresh.get(name) is not old:
                self._close_later(old)
        self._clients = fresh

    def _close_later(self, client: _Provider) -> None:
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
