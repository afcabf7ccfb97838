"""``istio_requests_total`` at the waypoint: one count per finished request, local replies included.

Istio's stats filter runs late in the waypoint chain but records at stream end, so requests the
RBAC filter answered (403) are counted as well as routed ones (facts §3.1 filter order, §3.3
names and labels; waypoints report ``reporter="waypoint"``). We do the same from
``on_stream_complete``, which the chain calls for every filter whatever answered.

Labels are Istio's standard set; what the waypoint cannot tell from the request alone (the
source's and the chosen endpoint's workload names) is ``unknown`` for now. ``response_flags`` is
``-``: Envoy's RBAC filter sets no flag on a deny (``rbac_filter.cc``), and our router's own
flags (``UH``, ``UT``) are not carried to the context yet.

Hot path: a request builds one small tuple and does one dict lookup for its counter child; the
label strings are made only the first time a combination is seen.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from waypoint.l7.filter import Filter, RequestContext
from waypoint.l7.message import get_header, is_grpc
from waypoint.telemetry.metrics import LABEL_NAMES, MTLS, UNKNOWN

REQUEST_LABELS: tuple[str, ...] = (*LABEL_NAMES, "response_code", "grpc_response_status")


class IstioRequestMetrics(Filter):
    """Counts ``istio_requests_total`` on ``registry`` (one instance per registry)."""

    name = "istio-stats"

    def __init__(self, registry: CollectorRegistry, cluster: str = "Kubernetes",
                 cluster_domain: str = "cluster.local") -> None:
        self.requests = Counter("istio_requests_total", "Total requests handled by this proxy", REQUEST_LABELS,
                                registry=registry)
        self.cluster = cluster
        self.cluster_domain = cluster_domain
        self._children: dict[tuple[object, ...], Counter] = {}

    def on_stream_complete(self, ctx: RequestContext) -> None:
        response = ctx.response
        status = response.status if response is not None else 0
        grpc = is_grpc(ctx.request.headers)
        grpc_status = get_header(response.headers, b"grpc-status") if grpc and response is not None else None
        key = (ctx.info.peer_identity, ctx.info.dialled, status, grpc, grpc_status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*self._labels(ctx, status, grpc, grpc_status))
        child.inc()

    def _labels(self, ctx: RequestContext, status: int, grpc: bool, grpc_status: bytes | None) -> tuple[str, ...]:
        values = dict.fromkeys(REQUEST_LABELS, UNKNOWN)
        principal = ctx.info.peer_identity
        if principal:
            values["source_principal"] = principal
            values["connection_security_policy"] = MTLS
            ns = principal.split("/ns/", 1)[1].split("/", 1)[0] if "/ns/" in principal else UNKNOWN
            values["source_workload_namespace"] = ns
        dialled = ctx.info.dialled
        if dialled is not None:
            values["destination_service"] = f"{dialled.name}.{dialled.namespace}.svc.{self.cluster_domain}"
            values["destination_service_name"] = dialled.name
            values["destination_service_namespace"] = dialled.namespace
            values["destination_cluster"] = self.cluster
        values["reporter"] = "waypoint"
        values["request_protocol"] = "grpc" if grpc else "http"
        values["response_code"] = str(status)
        values["grpc_response_status"] = grpc_status.decode() if grpc_status is not None else UNKNOWN
        values["response_flags"] = "-"
        return tuple(values[name] for name in REQUEST_LABELS)
