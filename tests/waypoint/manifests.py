"""Manifests for the waypoint end-to-end tests, as plain dicts (written to a folder as YAML).

Addresses (brief): pods on 127.N.12.x, service VIPs on 127.N.13.x, waypoints on 127.N.14.x, the
mesh's own listeners on 127.N.11.1 (port 0). N is picked per test process (100-199), so two runs
of this suite at once (helpers and CI share the machine) never bind the same pod or waypoint address.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
NET = f"127.{100 + os.getpid() % 100}"


def ip(rest: str) -> str:
    """``rest`` (e.g. "12.10") inside this process's 127.N/16."""
    return f"{NET}.{rest}"

TD = "cluster.local"


def namespace(name: str, *, waypoint: str | None = None, waypoint_ns: str | None = None,
              ambient: bool = True, labels: Mapping[str, str] | None = None) -> Doc:
    lab: dict[str, str] = dict(labels or {})
    if ambient:
        lab["istio.io/dataplane-mode"] = "ambient"
    if waypoint:
        lab["istio.io/use-waypoint"] = waypoint
    if waypoint_ns:
        lab["istio.io/use-waypoint-namespace"] = waypoint_ns
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": lab}}


def pod(name: str, ip: str, *, ns: str = "app", app: str | None = None, sa: str | None = None,
        labels: Mapping[str, str] | None = None, ports: Sequence[int] = (), node: str = "dev") -> Doc:
    lab = {"app": app or name, **(labels or {})}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": lab},
        "spec": {"serviceAccountName": sa or app or name, "nodeName": node,
                 "containers": [{"name": "main", "ports": [{"containerPort": p} for p in ports]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def service(name: str, vip: str, ports: Iterable[tuple[str, int, int]], *, ns: str = "app",
            app: str | None = None, labels: Mapping[str, str] | None = None,
            app_protocols: Mapping[str, str] | None = None, selector: Mapping[str, str] | None = None) -> Doc:
    """``ports``: (name, port, targetPort); the port name carries the protocol (Istio's rules)."""
    port_list = []
    for pname, port, target in ports:
        entry: dict[str, Any] = {"name": pname, "port": port, "targetPort": target}
        if app_protocols and pname in app_protocols:
            entry["appProtocol"] = app_protocols[pname]
        port_list.append(entry)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": {"clusterIP": vip, "selector": dict(selector or {"app": app or name}), "ports": port_list},
    }


def waypoint(name: str, address: str, *, ns: str = "app", waypoint_for: str | None = None,
             allowed_from: str | None = None, annotations: Mapping[str, str] | None = None) -> Doc:
    listener: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed_from:
        listener["allowedRoutes"] = {"namespaces": {"from": allowed_from}}
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": dict(annotations or {})},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [listener],
                 "addresses": [{"type": "IPAddress", "value": address}]},
    }


def backend_ref(name: str, port: int, weight: int | None = None, **extra: Any) -> Doc:
    ref: Doc = {"name": name, "port": port, **extra}
    if weight is not None:
        ref["weight"] = weight
    return ref


def http_route(name: str, parent: str, rules: list[Doc], *, ns: str = "app", parent_port: int | None = None,
               kind: str = "HTTPRoute") -> Doc:
    parent_ref: Doc = {"group": "", "kind": "Service", "name": parent}
    if parent_port is not None:
        parent_ref["port"] = parent_port
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [parent_ref], "rules": rules},
    }


def spiffe(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def write(folder: Path, docs: Iterable[Doc], filename: str = "mesh.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return folder


# -- the standard topology: namespace ``app`` uses waypoint ``waypoint`` for its services ----------
CLIENT_IP = ip("12.1")  # pod sleep (sa sleep)
V1_IP, V2_IP, MIRROR_IP = ip("12.10"), ip("12.11"), ip("12.12")
WP_IP = ip("14.1")
ECHO_VIP, V1_VIP, V2_VIP, MIRROR_VIP = ip("13.1"), ip("13.2"), ip("13.3"), ip("13.4")
HTTP_PORT, APP_PORT = 80, 8080
CLIENT_ID = spiffe("app", "sleep")
WAYPOINT_ID = spiffe("app", "waypoint")


def standard(*extra: Doc, ns_labels: Mapping[str, str] | None = None) -> list[Doc]:
    """sleep → echo (v1 + v2 pods), echo-v1, echo-v2, echo-mirror; all service-addressed via the waypoint."""
    http = [("http", HTTP_PORT, APP_PORT)]
    return [
        namespace("app", waypoint="waypoint", labels=ns_labels),
        waypoint("waypoint", WP_IP),
        pod("sleep", CLIENT_IP),
        pod("echo-v1", V1_IP, app="echo", sa="echo", labels={"version": "v1"}, ports=(APP_PORT,)),
        pod("echo-v2", V2_IP, app="echo", sa="echo", labels={"version": "v2"}, ports=(APP_PORT,)),
        pod("mirror", MIRROR_IP, app="mirror", ports=(APP_PORT,)),
        service("echo", ECHO_VIP, http, selector={"app": "echo"}),
        service("echo-v1", V1_VIP, http, selector={"app": "echo", "version": "v1"}),
        service("echo-v2", V2_VIP, http, selector={"app": "echo", "version": "v2"}),
        service("echo-mirror", MIRROR_VIP, http, selector={"app": "mirror"}),
        *extra,
    ]
