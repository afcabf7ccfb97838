"""Which policies apply where: istiod's attachment rules, as pure functions.

``IS:pilot/pkg/model/policyattachment.go`` ``WorkloadPolicyMatcher.ShouldAttachPolicy`` and
``IS:pilot/pkg/model/authorization.go`` ``ListAuthorizationPolicies`` (policies are looked up in
the root namespace and the workload's namespace):

- A workload (the destination ztunnel's view): policies without ``targetRefs`` in its namespace or
  the root namespace, whose ``selector.matchLabels`` is a subset of its labels (no selector: all).
  A policy with ``targetRefs`` never applies to a workload.
- A waypoint: "waypoints never use selector", so only ``targetRefs`` attach: kind ``Gateway`` naming
  this waypoint (policy in the waypoint's namespace), kind ``GatewayClass`` ``istio-waypoint``
  (policy in the root namespace: every waypoint), kind ``Service`` naming the request's
  destination service (policy in that service's namespace). ``ServiceEntry`` targets are not
  modelled by this data plane yet and never attach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from waypoint.mesh.model import WAYPOINT_CLASS, Service, Waypoint
from waypoint.policy.authz.model import AuthorizationPolicy, TargetRef

GATEWAY_GROUP = "gateway.networking.k8s.io"
DEFAULT_ROOT_NAMESPACE = "istio-system"


def selects_workload(
    policy: AuthorizationPolicy, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> bool:
    """Does this selector/namespace-wide/mesh-wide policy apply to a workload?"""
    if policy.target_refs:
        return False
    if policy.namespace not in (namespace, root_namespace):
        return False
    selector = policy.selector
    if selector is None:
        return True
    return all(labels.get(key) == value for key, value in selector.items())


class Targeted(Protocol):
    """A policy that attaches by ``targetRefs``: AuthorizationPolicy, RequestAuthentication (same rules)."""

    @property
    def namespace(self) -> str: ...

    @property
    def target_refs(self) -> tuple[TargetRef, ...]: ...


def attaches_to_waypoint(policy: Targeted, waypoint: Waypoint, root_namespace: str) -> bool:
    """Gateway-level attachment: applies to everything the waypoint handles."""
    for ref in policy.target_refs:
        if ref.group != GATEWAY_GROUP:
            continue
        if ref.kind == "GatewayClass" and ref.name == WAYPOINT_CLASS and policy.namespace == root_namespace:
            return True
        if (
            ref.kind == "Gateway"
            and ref.name == waypoint.name
            and policy.namespace == waypoint.namespace
            and ref.namespace in ("", waypoint.namespace)
        ):
            return True
    return False


def attaches_to_service(policy: Targeted, namespace: str, name: str) -> bool:
    """Service-level attachment: applies to requests whose destination is this Service."""
    if policy.namespace != namespace:
        return False
    return any(ref.group == "" and ref.kind == "Service" and ref.name == name for ref in policy.target_refs)


def service_key(service: Service) -> tuple[str, str]:
    return (service.namespace, service.name)
