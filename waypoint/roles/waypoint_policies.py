"""The waypoint's per-snapshot policy filters: ext_authz, jwt_authn, RBAC and the access log.

Split from :mod:`waypoint.roles.waypoint` so that the role reads as listeners and tunnels, and what a
new snapshot changes in its authorization and logging stands in one place. The filters are built
once and held by the role's chain; each snapshot swaps their tables (:meth:`WaypointPolicies.apply`),
so a policy change costs no chain rebuild and applies from the next request on.

AuthorizationPolicy (``targetRefs`` to this Gateway, its GatewayClass, or a Service it serves;
facts §3.2) is compiled once per snapshot into a :class:`WaypointAuthorizer`: HTTP requests meet it
in the RBAC filter, opaque TCP in :meth:`WaypointPolicies.tcp_denied` (Envoy's network RBAC).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from waypoint.identity.spiffe import Identity
from waypoint.l7.filter import DownstreamInfo
from waypoint.l7.filters.access_log import AccessLog, LogSinks
from waypoint.l7.filters.ext_authz import ExtAuthzFilter
from waypoint.l7.filters.jwt_authn import JwtAuthnFilter
from waypoint.l7.filters.rbac import AuthzDownstream, RbacFilter
from waypoint.mesh.state import MeshState
from waypoint.policy.attributes import Decision
from waypoint.policy.authz import WaypointAuthorizer
from waypoint.policy.extauthz import ExtAuthzClients
from waypoint.policy.jwks_fetch import JwksKeys
from waypoint.policy.meshconfig import mesh_config_from_snapshot
from waypoint.policy.request_authn import WaypointRules, load_request_authentications, rules_for_waypoint
from waypoint.policy.telemetry import access_logs_for

if TYPE_CHECKING:
    from waypoint.roles.waypoint import WaypointSettings

log = logging.getLogger("waypoint.roles.waypoint")  # the role's logger: its deny lines keep their source


class WaypointPolicies:
    """The filters a snapshot's policies configure, owned by one :class:`~waypoint.roles.waypoint.WaypointRole`."""

    def __init__(
        self,
        settings: WaypointSettings,
        state: MeshState,
        identity: Identity,
        ext_authz_clients: ExtAuthzClients,
        log_sinks: LogSinks | None,
    ) -> None:
        self.settings = settings
        self.ext_authz_clients = ext_authz_clients  # the mesh config's ext-authz providers
        self.ext_authz = ExtAuthzFilter(ext_authz_clients, str(identity))
        self.rbac = RbacFilter()
        self.jwt_keys = JwksKeys()  # RequestAuthentication keys: inline, or fetched from jwksUri off the hot path
        self.jwt_authn = JwtAuthnFilter()
        self.access_log = AccessLog(log_sinks or LogSinks(), state.cluster_domain)
        self.apply(state)

    def _authorizer(self, state: MeshState) -> WaypointAuthorizer | None:
        """This snapshot's policies for this waypoint; None when there are none at all (the RBAC
        filter then costs one attribute test per request)."""
        wp = state.waypoint(self.settings.namespace, self.settings.name)
        if wp is None or not state.snapshot.objects("AuthorizationPolicy"):
            return None
        return WaypointAuthorizer.from_snapshot(state.snapshot, wp, root_namespace=self.settings.root_namespace,
                                                providers=self.ext_authz_clients.kinds)

    def apply(self, state: MeshState) -> None:
        """The snapshot's mesh config (ext-authz providers, access logs) and policies into the filters."""
        s = self.settings
        mesh = mesh_config_from_snapshot(state.snapshot, s.root_namespace)
        self.ext_authz_clients.update(mesh, state)
        self.access_log.swap(access_logs_for(state.snapshot, mesh, s.namespace, s.name, s.root_namespace,
                                             s.default_access_log))
        authorizer = self._authorizer(state)
        self.ext_authz.swap(authorizer, state.snapshot.services)
        self.rbac.swap(authorizer, state.snapshot.services)
        jwt_rules = self._request_authn(state)
        self.jwt_keys.want(jwt_rules.all_rules() if jwt_rules is not None else ())
        self.jwt_authn.swap(jwt_rules, self.jwt_keys, state.snapshot.services)

    def _request_authn(self, state: MeshState) -> WaypointRules | None:
        """RequestAuthentication attached to this waypoint or its services; None when there is none."""
        wp = state.waypoint(self.settings.namespace, self.settings.name)
        if wp is None or not state.snapshot.objects("RequestAuthentication"):
            return None
        return rules_for_waypoint(load_request_authentications(state.snapshot), wp, self.settings.root_namespace)

    def tcp_denied(self, info: DownstreamInfo) -> Decision | None:
        """Envoy's network RBAC for an opaque TCP tunnel: the deny, or None when allowed."""
        authz = self.rbac.authorizer
        if authz is None or not isinstance(info, AuthzDownstream) or info.connection is None:
            return None
        decision = authz.check_connection(info.service, info.connection)
        if decision.allowed:
            return None
        self.rbac.denied += 1
        conn = info.connection
        log.info("waypoint TCP %s -> %s:%d closed: %s (policy %s)", info.peer_identity or info.peer_address,
                 conn.destination_ip, conn.destination_port, decision.reason, decision.policy or "none matched")
        return decision

    def dump(self) -> dict[str, Any]:
        """The filters' part of the role's config dump: whether each enforces, and its counters."""
        return {
            "rbac": {"enforcing": self.rbac.authorizer is not None, "allowed": self.rbac.allowed,
                     "denied": self.rbac.denied},
            "ext_authz": {"providers": dict(self.ext_authz_clients.kinds), "ok": self.ext_authz.ok,
                          "denied": self.ext_authz.denied, "error": self.ext_authz.errors,
                          "failure_mode_allowed": self.ext_authz.failure_mode_allowed},
            "jwt_authn": {"enforcing": self.jwt_authn.active, "allowed": self.jwt_authn.allowed,
                          "denied": self.jwt_authn.denied, "jwks_fetch_ok": self.jwt_keys.fetch_ok,
                          "jwks_fetch_failed": self.jwt_keys.fetch_failed},
        }

    async def aclose(self) -> None:
        """Close the provider clients and the JWKS fetcher (the role's ``stop``)."""
        await self.ext_authz_clients.aclose()
        await self.jwt_keys.aclose()
