"""A waypoint Gateway's status from what exists in the cluster. Pure: the time comes in as an argument.

Istio's ``reportGatewayStatus`` and ``setProgrammedCondition``
(``IS:pilot/pkg/config/kube/gateway/conversion.go``, "Status reporting helpers") with the waypoint
class's settings (``classInfos``: ``addressType: ""``, report both kinds of address):

- ``Accepted``: True/``Accepted`` "Resource accepted"; False when the Gateway is no valid waypoint,
  with the Gateway API reason (``ListenersNotValid`` for the listeners, ``Invalid`` otherwise;
  gateway-api ``apis/v1/gateway_types.go``, "GatewayConditionReason").
- ``Programmed``: True/``Programmed`` "Resource programmed, assigned to service(s) <host>:<port>" once
  the Service exists; else False/``AddressNotAssigned`` "Failed to assign to any requested addresses:
  hostname "<host>" not found" (Istio's warning for a missing Service). A Service that exists without a
  cluster IP yet is ``AddressNotAssigned`` too (a real API server assigns it at creation; the stand-in
  does it later). Not accepted: False/``Invalid``.
- ``addresses``: the Service's cluster IPs (``IPAddress``), then its hostname (``Hostname``).
- Each condition carries ``observedGeneration``; ``lastTransitionTime`` moves only when the status
  (True/False) changes (Istio's ``UpdateConditionIfChanged``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a Gateway of the waypoint class is not accepted: a Gateway API reason and a message."""

    reason: str  # ListenersNotValid | Invalid
    message: str


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the status needs of the waypoint's Service: its cluster IPs and port numbers."""

    cluster_ips: tuple[str, ...]
    ports: tuple[int, ...]


def service_hostname(name: str, namespace: str, cluster_domain: str) -> str:
    return f"{name}.{namespace}.svc.{cluster_domain}"


def gateway_status(
    gateway: Mapping[str, Any],
    *,
    hostname: str,
    service: ServiceView | None,
    rejection: Rejection | None,
    now: str,
) -> Obj:
    """The ``status`` to apply: addresses and the Accepted/Programmed conditions."""
    generation = _generation(gateway)
    existing = _conditions(gateway)
    if rejection is not None:
        accepted = _condition("Accepted", False, rejection.reason, rejection.message)
        programmed = _condition("Programmed", False, "Invalid", f"Gateway is not accepted: {rejection.message}")
        addresses: list[Obj] = []
    else:
        accepted = _condition("Accepted", True, "Accepted", "Resource accepted")
        programmed = _programmed(gateway, hostname, service)
        addresses = _addresses(hostname, service)
    conditions = [_with_time(c, generation, existing, now) for c in (accepted, programmed)]
    return {"addresses": addresses, "conditions": conditions}


def _programmed(gateway: Mapping[str, Any], hostname: str, service: ServiceView | None) -> Obj:
    if service is None:
        return _condition("Programmed", False, "AddressNotAssigned",
                          f'Failed to assign to any requested addresses: hostname "{hostname}" not found')
    if not service.cluster_ips:
        return _condition("Programmed", False, "AddressNotAssigned",
                          f'Failed to assign to any requested addresses: hostname "{hostname}" has no address yet')
    internal = sorted({f"{hostname}:{p}" for p in _listener_ports(gateway) if p in service.ports})
    message = "Resource programmed"
    if internal:
        message += f", assigned to service(s) {_human_join(internal)}"
    return _condition("Programmed", True, "Programmed", message)


def _addresses(hostname: str, service: ServiceView | None) -> list[Obj]:
    if service is None or not service.cluster_ips:
        return []
    out = [{"type": "IPAddress", "value": ip} for ip in service.cluster_ips if _is_ip(ip)]
    out.append({"type": "Hostname", "value": hostname})
    return out


def _condition(kind: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def _with_time(cond: Obj, generation: int, existing: Mapping[str, Mapping[str, Any]], now: str) -> Obj:
    """Keep the old ``lastTransitionTime`` while the condition's status stays the same."""
    old = existing.get(cond["type"])
    since = now
    if old is not None and old.get("status") == cond["status"] and isinstance(old.get("lastTransitionTime"), str):
        since = old["lastTransitionTime"]
    return {**cond, "observedGeneration": generation, "lastTransitionTime": since}


def status_differs(current: Any, desired: Mapping[str, Any]) -> bool:
    """Whether applying ``desired`` would change the Gateway's status (what we own of it): the
    addresses, and each of our conditions but for its time. Skipping equal writes keeps the watch of
    our own status writes from becoming a loop."""
    status: Mapping[str, Any] = current if isinstance(current, Mapping) else {}
    if list(status.get("addresses") or []) != list(desired.get("addresses") or []):
        return True
    have = _by_type(status.get("conditions"))
    for cond in desired.get("conditions") or ():
        old = have.get(cond["type"])
        if old is None or any(old.get(k) != cond.get(k) for k in ("status", "reason", "message", "observedGeneration")):
            return True
    return False


def _conditions(gateway: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = gateway.get("status")
    return _by_type(status.get("conditions") if isinstance(status, Mapping) else None)


def _by_type(conditions: Any) -> dict[str, Mapping[str, Any]]:
    if not isinstance(conditions, Sequence):
        return {}
    return {c["type"]: c for c in conditions if isinstance(c, Mapping) and isinstance(c.get("type"), str)}


def _generation(gateway: Mapping[str, Any]) -> int:
    md = gateway.get("metadata")
    gen = md.get("generation") if isinstance(md, Mapping) else None
    return gen if isinstance(gen, int) else 0


def _listener_ports(gateway: Mapping[str, Any]) -> Iterable[int]:
    spec = gateway.get("spec")
    listeners = spec.get("listeners") if isinstance(spec, Mapping) else None
    for listener in listeners if isinstance(listeners, Sequence) else ():
        port = listener.get("port") if isinstance(listener, Mapping) else None
        if isinstance(port, int):
            yield port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _human_join(items: Sequence[str]) -> str:
    """Istio's ``humanReadableJoin``: ``a``, ``a and b``, ``a, b, and c``."""
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]
