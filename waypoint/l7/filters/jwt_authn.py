"""The waypoint's ``jwt_authn`` filter: RequestAuthentication, between ext_authz and RBAC (facts §3.1,
``IS:pilot/pkg/networking/core/listener_waypoint.go`` ``buildWaypointHTTPFilters``).

The decision is :class:`~waypoint.policy.jwt_authenticator.JwtAuthenticator`'s (sans-I/O); this filter
picks the authenticator for the request's destination (Gateway-level rules, plus the Service's own),
applies the request edits and answers a refused token as Envoy does (``jwt_authn/filter.cc``
``onComplete``): the failure text as body, 401 (403 for a disallowed audience), ``www-authenticate:
Bearer realm="<scheme>://<host><path>", error="invalid_token"`` (path cut at 256 characters,
``buildOriginalUri``), response code details ``jwt_authn_access_denied{Jwt_verification_fails}``.
A verified payload is left on the request context (``ctx.state[JWT_PAYLOAD]``) for the RBAC filter's
``request.auth.*`` (Envoy's dynamic metadata ``envoy.filters.http.jwt_authn``).

CORS preflights pass untouched (istiod sets ``bypass_cors_preflight: true``).

Cost: with no RequestAuthentication for this waypoint the filter is a single attribute test per
request; with rules for some services only, a request elsewhere costs one dict lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from waypoint.l7.filter import CONTINUE, Filter, LocalReply, RequestContext, Result
from waypoint.l7.filters.rbac import JWT_PAYLOAD, AuthzDownstream
from waypoint.l7.message import RequestHead, get_header
from waypoint.mesh.model import Service
from waypoint.policy.jwt import Failure
from waypoint.policy.jwt_authenticator import JwtAuthenticator
from waypoint.policy.request_authn import JwtRule, KeySource, WaypointRules

log = logging.getLogger(__name__)

_MAX_URI_PATH = 256  # jwt_authn/filter.cc MaximumUriLength


class JwtAuthnFilter(Filter):
    """RequestAuthentication at the waypoint; :meth:`swap` installs the next snapshot's rules."""

    name = "jwt_authn"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall clock: ``exp``/``nbf`` are Unix times
        self.allowed = self.denied = 0  # Envoy's jwt_authn.allowed / jwt_authn.denied
        self.gateway: JwtAuthenticator | None = None
        self.by_service: dict[tuple[str, str], JwtAuthenticator] = {}
        self.active = False

    def swap(self, rules: WaypointRules | None, keys: KeySource, services: Iterable[Service] = ()) -> None:
        """One authenticator per distinct rule set (rules sorted by issuer), shared by the services
        that have the same ones."""
        if rules is None or rules.empty:
            self.gateway, self.by_service, self.active = None, {}, False
            return
        made: dict[tuple[JwtRule, ...], JwtAuthenticator] = {}

        def build(rule_set: tuple[JwtRule, ...]) -> JwtAuthenticator:
            if rule_set not in made:
                made[rule_set] = JwtAuthenticator(rule_set, keys)
            return made[rule_set]

        self.gateway = build(rules.gateway) if rules.gateway else None
        self.by_service = {key: build(rule_set) for key, rule_set in rules.by_service.items()}
        self.active = True

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        if not self.active:
            return CONTINUE
        info = ctx.info
        service = info.service if isinstance(info, AuthzDownstream) else None
        auth = self.gateway
        if service is not None and self.by_service:
            auth = self.by_service.get((service.namespace, service.name), auth)
        if auth is None or (head.method == "OPTIONS" and _cors_preflight(head)):
            return CONTINUE
        outcome = auth.authenticate(head.headers, head.path, self._clock())
        if outcome.failure is not None:
            self.denied += 1
            log.debug("jwt_authn: %s %s refused: %s", head.method, head.path, outcome.failure.message)
            return refusal(outcome.failure, head)
        remove = outcome.remove
        if remove and any(k in remove for k, _ in head.headers):
            head.headers[:] = [(k, v) for k, v in head.headers if k not in remove]
        if outcome.add:
            head.headers.extend(outcome.add)
        if outcome.path is not None:
            head.path = outcome.path
        if outcome.claims is not None:
            self.allowed += 1
            ctx.state[JWT_PAYLOAD] = outcome.claims
        return CONTINUE


def refusal(failure: Failure, head: RequestHead) -> LocalReply:
    """Envoy's local reply for a refused token."""
    realm = f'Bearer realm="{head.scheme}://{head.authority}{head.path[:_MAX_URI_PATH]}", error="invalid_token"'
    details = "jwt_authn_access_denied{" + "_".join(failure.message.split()) + "}"
    challenge = ((b"www-authenticate", realm.encode("latin-1", "replace")),)
    return LocalReply(failure.status, failure.message.encode(), challenge, details=details)


def _cors_preflight(head: RequestHead) -> bool:
    return get_header(head.headers, b"origin") is not None and (
        get_header(head.headers, b"access-control-request-method") is not None
    )
