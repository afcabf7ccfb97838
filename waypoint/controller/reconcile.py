"""One Gateway's reconcile as a plan: what to apply, what to leave alone, what status to write. Pure.

The decisions of istiod's ``Reconcile`` / ``configureIstioGateway`` / ``apply`` / ``canManage``
(``IS:pilot/pkg/config/kube/gateway/deploymentcontroller.go``):

- a Gateway of another class is not ours: no plan at all (no objects, no status);
- a Gateway whose ``spec.addresses`` point elsewhere (more than one, or one that is not an IP) is
  not managed (``IsManaged``): nothing is deployed for it;
- an object that exists without our managed label was made by someone else: it is not taken over
  (``canManage``), and the plan names it so the log can say why;
- a Gateway that is no valid waypoint (``waypoint.mesh.kinds.parse_gateway``: the HBONE listener on
  15008, the ``istio.io/waypoint-for`` value) gets ``Accepted: False`` and nothing deployed: our
  waypoint process would refuse to serve it. What an earlier valid version deployed stays.
- the status is written only when it differs from what the Gateway shows (see :mod:`.status`).

:func:`stale_bindings` is the one deletion the controller does itself: a ClusterRoleBinding cannot
be garbage collected through a namespaced owner, so one that no waypoint Gateway needs goes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waypoint.controller.cache import Name, Observed
from waypoint.controller.render import Obj, binding_name, deployment_name, render, service_account_name
from waypoint.controller.settings import ControllerSettings
from waypoint.controller.status import Rejection, ServiceView, gateway_status, service_hostname, status_differs
from waypoint.errors import ManifestError
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry
from waypoint.mesh.model import WAYPOINT_CLASS

Lookup = Callable[[str, str, str], Observed | None]  # (kind, namespace, name) -> what exists


@dataclass(frozen=True, slots=True)
class Plan:
    """What reconciling one Gateway takes."""

    apply: tuple[Obj, ...]  # server-side apply these, in order
    not_ours: tuple[str, ...]  # "Deployment shop/waypoint": exists without our label, left alone
    status: Obj | None  # the Gateway's new status; None when it already shows this
    rejection: Rejection | None


def is_waypoint_class(gateway: Mapping[str, Any]) -> bool:
    spec = gateway.get("spec")
    return isinstance(spec, Mapping) and spec.get("gatewayClassName") == WAYPOINT_CLASS


def is_managed(gateway: Mapping[str, Any]) -> bool:
    """Istio's ``IsManaged``: no ``spec.addresses``, or a single IP address (kept for the Service)."""
    addresses = (gateway.get("spec") or {}).get("addresses") or []
    if not addresses:
        return True
    if len(addresses) > 1 or not isinstance(addresses[0], Mapping):
        return False
    return addresses[0].get("type", "IPAddress") in (None, "IPAddress")


def validate(gateway: Mapping[str, Any], registry: KindRegistry | None = None) -> Rejection | None:
    """The waypoint checks the data plane makes (``parse_gateway``), as a Gateway API rejection."""
    try:
        (registry or KindRegistry()).parse(gateway, ParseContext())
    except ManifestError as e:
        reason = "ListenersNotValid" if e.field.startswith("spec.listeners") else "Invalid"
        return Rejection(reason, f"{e.field}: {e.message}")
    return None


def plan_gateway(
    gateway: Mapping[str, Any], lookup: Lookup, settings: ControllerSettings, now: str
) -> Plan | None:
    """The plan for one Gateway, or None when it is not a managed waypoint Gateway."""
    if not is_waypoint_class(gateway) or not is_managed(gateway):
        return None
    md = gateway["metadata"]
    namespace = md.get("namespace", "")
    rejection = validate(gateway)
    apply: list[Obj] = []
    not_ours: list[str] = []
    if rejection is None:
        for obj in render(gateway, settings):
            ns, obj_name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            seen = lookup(obj["kind"], ns, obj_name)
            if seen is not None and not seen.managed:
                not_ours.append(f"{obj['kind']} {ns}/{obj_name}" if ns else f"{obj['kind']} {obj_name}")
            else:
                apply.append(obj)
    name = deployment_name(gateway) if rejection is None else str(md.get("name", ""))
    service = lookup("Service", namespace, name) if rejection is None else None
    view = ServiceView(service.cluster_ips, service.ports) if service is not None and service.managed else None
    hostname = service_hostname(name, namespace, settings.cluster_domain)
    status = gateway_status(gateway, hostname=hostname, service=view, rejection=rejection, now=now)
    changed = status_differs(gateway.get("status"), status)
    return Plan(tuple(apply), tuple(not_ours), status if changed else None, rejection)


def stale_bindings(
    gateways: Iterable[Mapping[str, Any]],
    bindings: Mapping[Name, Observed],
    in_scope: Callable[[str], bool],
) -> list[str]:
    """Our ClusterRoleBindings that no waypoint Gateway (in the namespaces we look after) needs."""
    wanted: set[str] = set()
    for gw in gateways:
        if is_waypoint_class(gw) and is_managed(gw):
            wanted.add(binding_name(str(gw["metadata"].get("namespace", "")), service_account_name(gw)))
    return sorted(
        name for (_, name), seen in bindings.items()
        if seen.managed and seen.gateway is not None and in_scope(seen.gateway[0]) and name not in wanted
    )


def namespace_filter(namespaces: Collection[str]) -> Callable[[str], bool]:
    """``--namespace-filter``: only these namespaces (none given: every namespace)."""
    allowed = frozenset(namespaces)
    return (lambda ns: ns in allowed) if allowed else (lambda ns: True)
