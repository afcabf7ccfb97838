"""Istio AuthorizationPolicy (security.istio.io/v1, v1beta1) for the ztunnel and the waypoint.

Sans-I/O: validate manifests, compile them once per mesh snapshot, and answer checks with a
:class:`~waypoint.policy.attributes.Decision`. Modules: :mod:`.parse` (the validator),
:mod:`.model` (validated values), :mod:`.match` (string/IP/path matchers), :mod:`.scope` (which
policies apply where), :mod:`.ztunnel_rules` and :mod:`.envoy_rules` (the L4 and the Envoy-RBAC
forms), :mod:`.decide` (CUSTOM, DENY, ALLOW, dry-run), :mod:`.engine` (the authorizers).
"""

from waypoint.policy.authz.engine import SidecarAuthorizer, WaypointAuthorizer, ZtunnelAuthorizer
from waypoint.policy.authz.parse import parse_authorization_policy, validate_authorization_policy

__all__ = [
    "SidecarAuthorizer",
    "WaypointAuthorizer",
    "ZtunnelAuthorizer",
    "parse_authorization_policy",
    "validate_authorization_policy",
]
