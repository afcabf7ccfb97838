"""Parsers for the kinds the data plane models: Namespace, Pod, Service, EndpointSlice, Gateway.

Each takes the object's already-checked metadata (a ``KubeObject``) and returns a model value,
or raises ``ManifestError`` naming the field. Checks are the ones the API server would make on
the fields we read, plus the waypoint shape Istio requires (facts §2.2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.mesh.model import (
    DATAPLANE_MODE_LABEL,
    GATEWAY_NAME_LABEL,
    GATEWAY_SA_ANNOTATION,
    HBONE_PORT,
    SERVICE_NAME_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    WAYPOINT_CLASS,
    WAYPOINT_FOR_LABEL,
    AllowedNamespaces,
    ContainerPort,
    EndpointSlice,
    KubeObject,
    Namespace,
    Service,
    ServicePort,
    SliceEndpoint,
    Waypoint,
    WaypointRef,
    Workload,
)

ModelValue = Namespace | Workload | Service | EndpointSlice | Waypoint
KindParser = Callable[[KubeObject, "ParseContext"], ModelValue | None]

_WAYPOINT_FOR = ("service", "workload", "all", "none")  # IS:pkg/config/constants/constants.go L215-222
_TRANSPORTS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class ParseContext:
    cluster_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"  # istiod's default cluster ID, first part of workload UIDs
    default_namespace: str = "default"


def core_parsers() -> dict[str, KindParser]:
    return {
        "Namespace": parse_namespace,
        "Pod": parse_pod,
        "Service": parse_service,
        "EndpointSlice": parse_endpoint_slice,
        "Gateway": parse_gateway,
    }


def use_waypoint(labels: Mapping[str, str], own_namespace: str) -> WaypointRef | None:
    """``istio.io/use-waypoint`` [+ ``-namespace``]; ``none`` opts out.

    IS:pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go ``getUseWaypoint``.
    """
    name = labels.get(USE_WAYPOINT_LABEL)
    if name is None:
        return None
    if name in ("none", "#none"):
        return WaypointRef(name="", namespace="", opt_out=True)
    if not name:
        raise ManifestError(f.key_path("metadata.labels", USE_WAYPOINT_LABEL), "must name a waypoint")
    return WaypointRef(name=name, namespace=labels.get(USE_WAYPOINT_NAMESPACE_LABEL) or own_namespace)


def parse_namespace(obj: KubeObject, ctx: ParseContext) -> Namespace:
    f.dns_label(obj.name, "metadata.name")
    return Namespace(name=obj.name, labels=obj.labels, use_waypoint=use_waypoint(obj.labels, obj.name))


def parse_pod(obj: KubeObject, ctx: ParseContext) -> Workload:
    spec = f.mapping(obj.body.get("spec"), "spec", required=True)
    status = f.mapping(obj.body.get("status"), "status")
    sa = f.string(spec.get("serviceAccountName"), "spec.serviceAccountName") or f.string(
        spec.get("serviceAccount"), "spec.serviceAccount", default="default"
    )
    if sa:
        f.dns_subdomain(sa, "spec.serviceAccountName")
    ips = _pod_ips(status)
    conditions = f.sequence(status.get("conditions"), "status.conditions")
    ready = False
    for i, cond in enumerate(conditions):
        c = f.mapping(cond, f"status.conditions[{i}]")
        if f.string(c.get("type"), f"status.conditions[{i}].type") == "Ready":
            ready = f.string(c.get("status"), f"status.conditions[{i}].status") == "True"
    md = f.mapping(obj.body.get("metadata"), "metadata")
    return Workload(
        uid=f"{ctx.cluster_id}//v1/Pod/{obj.namespace}/{obj.name}",
        name=obj.name,
        namespace=obj.namespace,
        ips=ips,
        service_account=sa or "default",
        node=f.string(spec.get("nodeName"), "spec.nodeName"),
        labels=obj.labels,
        phase=f.string(status.get("phase"), "status.phase", default="Pending") or "Pending",
        ready=ready,
        dataplane_mode=obj.labels.get(DATAPLANE_MODE_LABEL),
        use_waypoint=use_waypoint(obj.labels, obj.namespace),
        ports=_container_ports(spec),
        gateway_name=obj.labels.get(GATEWAY_NAME_LABEL),
        deleting=md.get("deletionTimestamp") is not None,
    )


def _pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    ips: list[str] = []
    if status.get("podIP") is not None:
        ips.append(f.ip(status.get("podIP"), "status.podIP"))
    for i, item in enumerate(f.sequence(status.get("podIPs"), "status.podIPs")):
        addr = f.ip(f.mapping(item, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        if addr not in ips:
            ips.append(addr)
    return tuple(ips)


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    out: list[ContainerPort] = []
    containers = f.sequence(spec.get("containers"), "spec.containers")
    for ci, c in enumerate(containers):
        cpath = f"spec.containers[{ci}]"
        container = f.mapping(c, cpath)
        for pi, p in enumerate(f.sequence(container.get("ports"), f"{cpath}.ports")):
            path = f"{cpath}.ports[{pi}]"
            port = f.mapping(p, path)
            name = f.string(port.get("name"), f"{path}.name")
            if name:
                f.port_name(name, f"{path}.name")
            out.append(
                ContainerPort(
                    name=name,
                    port=f.port_number(port.get("containerPort"), f"{path}.containerPort"),
                    protocol=_transport(port.get("protocol"), f"{path}.protocol"),
                )
            )
    return tuple(out)


def _transport(value: Any, path: str) -> str:
    proto = f.string(value, path, default="TCP") or "TCP"
    if proto not in _TRANSPORTS:
        raise ManifestError(path, f"must be one of {', '.join(_TRANSPORTS)}, not {proto!r}")
    return proto


def parse_service(obj: KubeObject, ctx: ParseContext) -> Service:
    f.dns_label(obj.name, "metadata.name")
    spec = f.mapping(obj.body.get("spec"), "spec", required=True)
    selector = spec.get("selector")
    return Service(
        name=obj.name,
        namespace=obj.namespace,
        hostname=f"{obj.name}.{obj.namespace}.svc.{ctx.cluster_domain}",
        vips=_cluster_ips(spec),
        ports=_service_ports(spec),
        selector=None if selector is None else MappingProxyType(f.string_map(selector, "spec.selector")),
        labels=obj.labels,
        use_waypoint=use_waypoint(obj.labels, obj.namespace),
    )


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[str, ...]:
    cluster_ip = f.string(spec.get("clusterIP"), "spec.clusterIP")
    listed = f.sequence(spec.get("clusterIPs"), "spec.clusterIPs")
    if cluster_ip == "None":  # headless: no VIP
        return ()
    vips = [f.ip(cluster_ip, "spec.clusterIP")] if cluster_ip else []
    for i, v in enumerate(listed):
        addr = f.ip(v, f"spec.clusterIPs[{i}]")
        if i == 0 and vips and addr != vips[0]:
            raise ManifestError("spec.clusterIPs[0]", f"must equal spec.clusterIP {vips[0]}")
        if addr not in vips:
            vips.append(addr)
    return tuple(vips)


def _service_ports(spec: Mapping[str, Any]) -> tuple[ServicePort, ...]:
    raw = f.sequence(spec.get("ports"), "spec.ports")
    out: list[ServicePort] = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for i, p in enumerate(raw):
        path = f"spec.ports[{i}]"
        port = f.mapping(p, path)
        name = f.string(port.get("name"), f"{path}.name")
        if len(raw) > 1 and not name:
            raise ManifestError(f"{path}.name", "required when a service has more than one port")
        if name:
            f.dns_label(name, f"{path}.name")
            if name in seen_names:
                raise ManifestError(f"{path}.name", f"duplicate port name {name!r}")
            seen_names.add(name)
        number = f.port_number(port.get("port"), f"{path}.port")
        transport = _transport(port.get("protocol"), f"{path}.protocol")
        if (number, transport) in seen_ports:
            raise ManifestError(f"{path}.port", f"duplicate port {number}/{transport}")
        seen_ports.add((number, transport))
        app = port.get("appProtocol")
        out.append(
            ServicePort(
                name=name,
                port=number,
                target_port=_target_port(port.get("targetPort"), number, f"{path}.targetPort"),
                protocol=transport,
                app_protocol=None if app is None else f.string(app, f"{path}.appProtocol", required=True),
            )
        )
    return tuple(out)


def _target_port(value: Any, default: int, path: str) -> int | str:
    if value is None:
        return default
    if isinstance(value, str):
        if value.isdigit():  # IntOrString given as a quoted number
            return f.port_number(int(value), path)
        return f.port_name(value, path)
    return f.port_number(value, path)


def parse_endpoint_slice(obj: KubeObject, ctx: ParseContext) -> EndpointSlice:
    body = obj.body
    address_type = f.string(body.get("addressType"), "addressType", required=True)
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ManifestError("addressType", f"must be IPv4, IPv6 or FQDN, not {address_type!r}")
    ports: list[tuple[str, int]] = []
    for i, p in enumerate(f.sequence(body.get("ports"), "ports")):
        port = f.mapping(p, f"ports[{i}]")
        ports.append(
            (
                f.string(port.get("name"), f"ports[{i}].name"),
                f.port_number(port.get("port"), f"ports[{i}].port", required=port.get("port") is not None),
            )
        )
    endpoints: list[SliceEndpoint] = []
    for i, e in enumerate(f.sequence(body.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        ep = f.mapping(e, path)
        raw_addrs = f.sequence(ep.get("addresses"), f"{path}.addresses")
        if not raw_addrs:
            raise ManifestError(f"{path}.addresses", "required")
        if address_type == "FQDN":
            addrs = tuple(
                f.string(a, f"{path}.addresses[{j}]", required=True) for j, a in enumerate(raw_addrs)
            )
        else:
            addrs = tuple(f.ip(a, f"{path}.addresses[{j}]") for j, a in enumerate(raw_addrs))
        cond = f.mapping(ep.get("conditions"), f"{path}.conditions")
        ready = cond.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise ManifestError(f"{path}.conditions.ready", f"must be a boolean, not {ready!r}")
        ref = f.mapping(ep.get("targetRef"), f"{path}.targetRef")
        pod = f.string(ref.get("name"), f"{path}.targetRef.name") if ref.get("kind") == "Pod" else ""
        # discovery.k8s.io/v1: "a nil value should be interpreted as ready".
        endpoints.append(SliceEndpoint(addresses=addrs, ready=ready is not False, pod_name=pod or None))
    return EndpointSlice(
        name=obj.name,
        namespace=obj.namespace,
        service_name=obj.labels.get(SERVICE_NAME_LABEL, ""),
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def parse_gateway(obj: KubeObject, ctx: ParseContext) -> Waypoint | None:
    """A Gateway of class ``istio-waypoint`` becomes a Waypoint; other classes stay raw objects."""
    spec = f.mapping(obj.body.get("spec"), "spec", required=True)
    cls = f.string(spec.get("gatewayClassName"), "spec.gatewayClassName", required=True)
    listeners = f.sequence(spec.get("listeners"), "spec.listeners")
    hbone = None
    for i, item in enumerate(listeners):
        path = f"spec.listeners[{i}]"
        listener = f.mapping(item, path)
        f.string(listener.get("name"), f"{path}.name", required=True)
        port = f.port_number(listener.get("port"), f"{path}.port")
        proto = f.string(listener.get("protocol"), f"{path}.protocol", required=True)
        if proto == "HBONE" and port == HBONE_PORT and hbone is None:
            hbone = (listener, path)
    if cls != WAYPOINT_CLASS:
        return None
    if hbone is None:
        raise ManifestError(
            "spec.listeners", f"a waypoint needs a listener with protocol HBONE on port {HBONE_PORT}"
        )
    waypoint_for = obj.labels.get(WAYPOINT_FOR_LABEL, "service")
    if waypoint_for not in _WAYPOINT_FOR:
        raise ManifestError(
            f.key_path("metadata.labels", WAYPOINT_FOR_LABEL),
            f"must be one of {', '.join(_WAYPOINT_FOR)}, not {waypoint_for!r}",
        )
    status = f.mapping(obj.body.get("status"), "status")
    addresses = _gateway_addresses(spec, "spec") + _gateway_addresses(status, "status")
    return Waypoint(
        name=obj.name,
        namespace=obj.namespace,
        addresses=tuple(dict.fromkeys(addresses)),
        waypoint_for=waypoint_for,
        service_account=obj.annotations.get(GATEWAY_SA_ANNOTATION) or obj.name,
        allowed=_allowed_namespaces(hbone[0], hbone[1]),
    )


def _gateway_addresses(section: Mapping[str, Any], prefix: str) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(f.sequence(section.get("addresses"), f"{prefix}.addresses")):
        path = f"{prefix}.addresses[{i}]"
        addr = f.mapping(item, path)
        kind = f.string(addr.get("type"), f"{path}.type", default="IPAddress") or "IPAddress"
        if kind == "IPAddress":
            out.append(f.ip(addr.get("value"), f"{path}.value"))
        else:  # Hostname or implementation-specific: nothing we can dial on localhost
            f.string(addr.get("value"), f"{path}.value", required=True)
    return out


def _allowed_namespaces(listener: Mapping[str, Any], path: str) -> AllowedNamespaces:
    """IS:.../ambient/waypoints.go ``makeWaypointSelector``: From defaults to Same."""
    routes = f.mapping(listener.get("allowedRoutes"), f"{path}.allowedRoutes")
    ns = f.mapping(routes.get("namespaces"), f"{path}.allowedRoutes.namespaces")
    npath = f"{path}.allowedRoutes.namespaces"
    source = f.string(ns.get("from"), f"{npath}.from", default="Same") or "Same"
    if source not in ("Same", "All", "Selector"):
        raise ManifestError(f"{npath}.from", f"must be Same, All or Selector, not {source!r}")
    sel = f.mapping(ns.get("selector"), f"{npath}.selector")
    exprs: list[tuple[str, str, tuple[str, ...]]] = []
    for i, e in enumerate(f.sequence(sel.get("matchExpressions"), f"{npath}.selector.matchExpressions")):
        epath = f"{npath}.selector.matchExpressions[{i}]"
        expr = f.mapping(e, epath)
        op = f.string(expr.get("operator"), f"{epath}.operator", required=True)
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ManifestError(f"{epath}.operator", f"must be In, NotIn, Exists or DoesNotExist, not {op!r}")
        values = tuple(
            f.string(v, f"{epath}.values[{j}]")
            for j, v in enumerate(f.sequence(expr.get("values"), f"{epath}.values"))
        )
        exprs.append((f.string(expr.get("key"), f"{epath}.key", required=True), op, values))
    return AllowedNamespaces(
        source=source,
        match_labels=MappingProxyType(f.string_map(sel.get("matchLabels"), f"{npath}.selector.matchLabels")),
        match_expressions=tuple(exprs),
    )
