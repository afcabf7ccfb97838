"""Small builders shared by the routing unit tests: manifests as dicts, requests as views."""

from __future__ import annotations

import random
from typing import Any

from waypoint.l7.routing.decision import RequestView, RouteDecision, ServiceRef
from waypoint.l7.routing.model import Route
from waypoint.l7.routing.parse import parse_grpcroute, parse_httproute
from waypoint.l7.routing.table import RouteTable

NS = "ns1"
SVC = ServiceRef(NS, "svc", 80)
SERVICES: dict[tuple[str, str], dict[int, str]] = {
    (NS, "svc"): {80: "http", 8080: "http-alt"},
    (NS, "v1"): {80: "http", 7070: "grpc"},
    (NS, "v2"): {80: "http", 7070: "grpc"},
    (NS, "v3"): {80: "http"},
    ("ns2", "other"): {80: "http"},
}


def http_route(rules: list[dict[str, Any]], name: str = "r", ns: str = NS, **meta: Any) -> Route:
    return parse_httproute(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, **meta},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "svc", "namespace": NS}],
                "rules": rules,
            },
        }
    )


def grpc_route(rules: list[dict[str, Any]], name: str = "g", ns: str = NS) -> Route:
    return parse_grpcroute(
        {
            "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "svc", "namespace": NS}],
                "rules": rules,
            },
        }
    )


def backend(name: str, port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **extra}


def request(
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    authority: str = "svc",
    grpc: bool = False,
    source_namespace: str | None = NS,
) -> RequestView:
    return RequestView(
        method=method,
        path=path,
        authority=authority,
        headers=tuple((k.lower(), v) for k, v in (headers or {}).items()),
        dialled=SVC,
        grpc=grpc,
        source_namespace=source_namespace,
    )


def resolve(
    routes: list[Route], view: RequestView, seed: int = 0, grants: tuple[Any, ...] = ()
) -> RouteDecision:
    table = RouteTable.build(SVC, routes, SERVICES, grants)
    return table.resolve(view, random.Random(seed))
