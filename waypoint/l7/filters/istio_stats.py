"""Istio's HTTP metrics at the waypoint: one record per finished request, local replies included.

Istio's stats filter records at stream end (an access-log handler), so requests the RBAC filter
answered (403) are counted as well as routed ones (facts §3.1 filter order, §3.3 names and labels;
waypoints report ``reporter="waypoint"``). We do the same from ``on_stream_complete``, which the
chain calls for every filter whatever answered.

Labels as Istio's waypoint fills them (``istio/proxy`` ``source/extensions/filters/http/istio_stats/
istio_stats.cc``, ``populatePeerInfo``, ``Reporter::ServerGateway``):

- ``source_*``: the downstream peer, found by its address (``DownstreamInfo.source_workload``, set by
  the role per tunnel); ``source_principal`` is the tunnel's verified SAN and the namespace comes
  from it first; an unknown peer's canonical revision is ``latest``.
- ``destination_*``: the endpoint the router chose (``UpstreamTarget.workload`` and ``identity``), or
  the pod dialled; ``destination_service*`` the backend service of the route (Istio: the upstream
  cluster's ``istio.services`` metadata), else the one dialled. Istio writes the proxy's own
  namespace into ``destination_service_namespace``; we write the service's (they agree for the usual
  waypoint in its services' namespace, and one filter may serve several waypoints in ``dev``).
- ``response_flags``: what the router set on the context (``waypoint.l7.response_flags``), or ``DC``
  when the downstream went away before the exchange finished.
- ``grpc_response_status``: from the trailers (or a trailers-only head); empty for plain HTTP, as
  Istio. ``connection_security_policy``: ``mutual_tls`` with a verified peer, else ``none``.
- Request and response sizes are body bytes (Istio's docs: "HTTP request body sizes"; its filter
  reads the stream's wire bytes, headers included, which we do not re-encode to count).

Hot path: per request one tuple of object ids and small values, one dict lookup for the series, and
:meth:`RequestSeries.record` (three ``bisect``). Labels are built only for a new combination; the
objects whose ids are in a key are kept alive by the cache so an id cannot be reused under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from waypoint.l7.filter import CONTINUE, Filter, RequestContext, Result
from waypoint.l7.message import HeaderList, ResponseHead, get_header
from waypoint.l7.response_flags import DOWNSTREAM_CONNECTION_TERMINATION, NONE
from waypoint.l7.routing.decision import ServiceRef
from waypoint.telemetry.metrics import DEFAULT_CLUSTER, LABEL_NAMES, traffic_labels
from waypoint.telemetry.request_metrics import REQUEST_LABELS, RequestMetrics, RequestSeries

__all__ = ["REQUEST_LABELS", "IstioRequestMetrics"]

_GRPC_STATUS = "istio-stats.grpc-status"  # ctx.state key: grpc-status read from the trailers
_CACHE_LIMIT = 4096  # label combinations remembered; past it the cache starts over (labels are rebuilt)


class IstioRequestMetrics(Filter):
    """Records Istio's request metrics on ``registry`` (one instance per registry)."""

    name = "istio-stats"

    def __init__(
        self,
        registry: CollectorRegistry,
        cluster: str = DEFAULT_CLUSTER,
        cluster_domain: str = "cluster.local",
        clock: Callable[[], float] = time.monotonic,  # the codecs' clock (``RequestContext.started_at``)
    ) -> None:
        self.metrics = RequestMetrics(registry)
        self.cluster = cluster
        self.cluster_domain = cluster_domain
        self._clock = clock
        self._cache: dict[tuple[Any, ...], RequestSeries] = {}
        self._pinned: list[object] = []  # objects whose ids are in cache keys

    def on_response_trailers(self, ctx: RequestContext, trailers: HeaderList) -> Result:
        status = get_header(trailers, b"grpc-status")
        if status is not None:
            ctx.state[_GRPC_STATUS] = status
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        response = ctx.response
        status = response.status if response is not None else 0
        info = ctx.info
        grpc = ctx.view().grpc
        grpc_status = self._grpc_status(ctx, response) if grpc else None
        flags = ctx.response_flags
        upstream = ctx.upstream
        destination = None
        if upstream is not None:
            if flags == NONE and not upstream.finished and not upstream.relayed:
                flags = DOWNSTREAM_CONNECTION_TERMINATION  # the downstream left mid-exchange
            destination = upstream.target
        elif response is None and flags == NONE:
            flags = DOWNSTREAM_CONNECTION_TERMINATION
        route = ctx.route
        service = route.backend if route is not None and route.backend is not None else info.dialled
        source = info.source_workload
        key = (id(source), info.peer_identity, id(destination), id(info.destination_workload), id(service),
               status, grpc, grpc_status, flags)
        series = self._cache.get(key)
        if series is None:
            series = self._remember(key, ctx, (source, destination, info.destination_workload, service),
                                    status, grpc, grpc_status, flags)
        series.record((self._clock() - ctx.started_at) * 1000.0, ctx.request_bytes, ctx.response_bytes)

    @staticmethod
    def _grpc_status(ctx: RequestContext, response: ResponseHead | None) -> bytes | None:
        found = ctx.state.get(_GRPC_STATUS)
        if found is None and response is not None:
            found = get_header(response.headers, b"grpc-status")  # trailers-only (local replies)
        return found  # type: ignore[no-any-return]

    def _remember(
        self, key: tuple[Any, ...], ctx: RequestContext, pins: tuple[object, ...],
        status: int, grpc: bool, grpc_status: bytes | None, flags: str,
    ) -> RequestSeries:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
            self._pinned.clear()
        labels = self.labels(ctx, status, grpc, grpc_status, flags)
        series = self._cache[key] = self.metrics.series(labels)
        self._pinned.append(pins)
        return series

    def labels(self, ctx: RequestContext, status: int, grpc: bool, grpc_status: bytes | None,
               flags: str) -> tuple[str, ...]:
        """The label values (in :data:`REQUEST_LABELS` order) for one finished request."""
        info = ctx.info
        principal = info.peer_identity
        upstream = ctx.upstream
        target = upstream.target if upstream is not None else None
        destination = getattr(target, "workload", None) or info.destination_workload
        labels = traffic_labels(
            reporter="waypoint",
            source=info.source_workload,
            source_principal=principal,
            destination=destination,
            destination_principal=getattr(target, "identity", None),
            mtls=principal is not None,
            cluster=self.cluster,
        )
        out = dict(zip(LABEL_NAMES, labels.values(), strict=True))
        if info.source_workload is None:
            out["source_canonical_revision"] = "latest"
            if principal and "/ns/" in principal:  # Istio: the namespace from the SAN first
                out["source_workload_namespace"] = principal.split("/ns/", 1)[1].split("/", 1)[0]
        if principal is None:
            out["connection_security_policy"] = "none"
        route = ctx.route
        service: ServiceRef | None = route.backend if route is not None and route.backend is not None else info.dialled
        if service is not None:
            out["destination_service"] = f"{service.name}.{service.namespace}.svc.{self.cluster_domain}"
            out["destination_service_name"] = service.name
            out["destination_service_namespace"] = service.namespace
        out["destination_cluster"] = self.cluster
        out["request_protocol"] = "grpc" if grpc else "http"
        out["response_flags"] = flags
        out["response_code"] = str(status)
        out["grpc_response_status"] = grpc_status.decode("latin-1") if grpc_status is not None else ""
        return tuple(out[name] for name in REQUEST_LABELS)

