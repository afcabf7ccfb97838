"""The waypoint's RBAC filter: AuthorizationPolicy on each HTTP request, before anything else runs.

Envoy's HTTP RBAC filter (``source/extensions/filters/http/rbac/rbac_filter.cc``
``decodeHeaders``), which istiod puts in the waypoint after ext_authz and jwt_authn
(``IS:pilot/pkg/networking/core/listener_waypoint.go`` ``buildWaypointHTTPFilters``; facts §3.1):
a denied request is answered from the proxy with ``403`` and the body ``RBAC: access denied``,
response code details ``rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]`` (``none`` when no ALLOW
matched), and no response flag (the filter sets none, so Istio's ``response_flags`` is ``-``).
A gRPC request gets Envoy's gRPC local reply instead: HTTP 200 trailers-only with
``grpc-status: 7`` (PERMISSION_DENIED, ``httpToGrpcStatus(403)``) and the body as
``grpc-message`` (:func:`waypoint.l7.chain.render_local_reply`).

The decision is the engine's (:class:`waypoint.policy.authz.WaypointAuthorizer`, sans-I/O); this
filter only gathers the facts. The connection's half (peer identity proven by mTLS, peer address,
the ``:authority`` destination, the dialled Service) is worked out once per tunnel by the role
and carried on :class:`AuthzDownstream`, so a request adds only its method, path, host and headers.

Cost when no policy applies: with no policy for this waypoint the filter has no authorizer and a
request costs one attribute test (Envoy's "no engine, allowed by default"); with policies for
some services only, a request to another service costs one set lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from waypoint.identity.spiffe import Identity
from waypoint.l7.filter import CONTINUE, DownstreamInfo, Filter, LocalReply, RequestContext, Result
from waypoint.l7.message import RequestHead
from waypoint.mesh.model import Service
from waypoint.policy.attributes import ConnectionFacts, Decision, RequestFacts
from waypoint.policy.authz import WaypointAuthorizer

JWT_PAYLOAD = "jwt_authn.payload"  # ctx.state key the jwt_authn filter sets (waypoint/l7/filters/jwt_authn.py)

log = logging.getLogger(__name__)

DENIED_BODY = b"RBAC: access denied"
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True, slots=True)
class AuthzDownstream(DownstreamInfo):
    """A tunnel's :class:`DownstreamInfo` plus what authorization needs, computed once per tunnel."""

    connection: ConnectionFacts | None = None
    service: Service | None = None  # the Service whose VIP the client dialled (targetRefs kind Service)


def connection_facts(info: DownstreamInfo) -> ConnectionFacts:
    """The L4 facts of a downstream that did not come with them (plain TCP, tests): no identity."""
    if isinstance(info, AuthzDownstream) and info.connection is not None:
        return info.connection
    peer = info.peer_address or ("", 0)
    dest = info.destination or ("", 0)
    identity = Identity.parse(info.peer_identity) if info.peer_identity else None
    return ConnectionFacts(peer[0], identity, dest[0], dest[1])


class ServiceScope:
    """Which requests a per-snapshot authorizer must see, learnt once per snapshot: all of them
    (policies attached to the waypoint itself) or those to the services with policies of their own.
    The RBAC and ext_authz filters share it, so a request no policy concerns costs one lookup."""

    __slots__ = ("bound", "gateway_level")

    def __init__(self, gateway_level: bool, bound: Iterable[Service] = ()) -> None:
        self.gateway_level = gateway_level
        self.bound = frozenset((s.namespace, s.name) for s in bound)

    @property
    def empty(self) -> bool:
        return not (self.gateway_level or self.bound)

    def wants(self, service: Service | None) -> bool:
        return self.gateway_level or (service is not None and (service.namespace, service.name) in self.bound)


def dialled_service(info: DownstreamInfo) -> Service | None:
    """The Service whose VIP the tunnel was opened to (targetRefs kind Service)."""
    return info.service if isinstance(info, AuthzDownstream) else None


def request_facts(info: DownstreamInfo, head: RequestHead, jwt_claims: Any = None) -> RequestFacts:
    """What the engine sees of one request: the tunnel's connection facts plus the request line,
    host and headers (decoded once, here)."""
    return RequestFacts(
        connection_facts(info),
        head.method,
        head.path,
        request_host(head.authority, head.scheme),
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
        jwt_claims,
    )


def request_host(authority: str, scheme: str) -> str:
    """``:authority`` without the scheme's default port (the contract of ``RequestFacts.host``)."""
    suffix = _DEFAULT_PORTS.get(scheme)
    if suffix is not None and authority.endswith(suffix):
        return authority[: -len(suffix)]
    return authority


def denial(decision: Decision) -> LocalReply:
    """Envoy's answer to a denied request (``sendLocalReply(Forbidden, "RBAC: access denied", ...,
    RcDetails::RbacAccessDenied)``); the details name the deciding policy, as Envoy's do."""
    return LocalReply(403, DENIED_BODY, details=f"rbac_access_denied_matched_policy[{envoy_policy_name(decision)}]")


def envoy_policy_name(decision: Decision) -> str:
    """The policy name Envoy's RBAC reports, as istiod names each rule of a policy
    (``IS:pilot/pkg/security/authz/builder/builder.go``: ``ns[NS]-policy[NAME]-rule[I]``); ``none``
    when no policy matched (ALLOW policies applied and none allowed)."""
    if not decision.policy or decision.rule < 0:
        return "none"
    namespace, _, name = decision.policy.partition("/")
    return f"ns[{namespace}]-policy[{name}]-rule[{decision.rule}]"


class RbacFilter(Filter):
    """AuthorizationPolicy at the waypoint. :meth:`swap` installs the next snapshot's authorizer;
    live connections see it on their next request."""

    name = "rbac"

    def __init__(self, authorizer: WaypointAuthorizer | None = None, services: Iterable[Service] = ()) -> None:
        self.allowed = 0  # Envoy's rbac.allowed / rbac.denied counters (only counted with an authorizer)
        self.denied = 0
        self.swap(authorizer, services)

    def swap(self, authorizer: WaypointAuthorizer | None, services: Iterable[Service] = ()) -> None:
        """Install ``authorizer``; ``services`` are the snapshot's, to learn once which ones have
        policies of their own (the rest are checked only when Gateway-level policies exist)."""
        gateway = set(authorizer.policy_names(None)) if authorizer is not None else set()
        self.scope = ServiceScope(
            bool(gateway),
            (s for s in services if authorizer is not None and set(authorizer.policy_names(s)) - gateway),
        )
        self.authorizer = None if self.scope.empty else authorizer

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        authz = self.authorizer
        if authz is None:
            return CONTINUE
        info = ctx.info
        service = dialled_service(info)
        if not self.scope.wants(service):
            return CONTINUE
        # with the jwt_authn filter's verified token, if any
        decision = authz.check_request(service, request_facts(info, head, ctx.state.get(JWT_PAYLOAD)))
        if decision.dry_run_denied_by:
            log.info("rbac: dry-run policy %s would deny %s %s from %s", ", ".join(decision.dry_run_denied_by),
                     head.method, head.path, info.peer_identity or info.peer_address)
        if decision.allowed:
            self.allowed += 1
            return CONTINUE
        self.denied += 1
        log.debug("rbac: %s %s from %s denied: %s (policy %s)", head.method, head.path,
                  info.peer_identity or info.peer_address, decision.reason, decision.policy or "none")
        return denial(decision)
