"""Istio's TCP metrics for opaque TCP relayed by the waypoint (``reporter="waypoint"``).

Envoy's waypoint runs its ``istio_stats`` network filter on TCP chains too (``istio/proxy``
``istio_stats.cc``, ``reportHelper`` without HTTP: opened once the peer is known, bytes from the
downstream meter, closed at the end). Here a relay that reached its upstream is counted opened, and
its bytes and the close are added when the relay ends (``Relay.on_done``): no per-chunk work, the
relay already counts bytes in plain ints. A dial that failed is opened, failed and closed with
``response_flags="CONNECT"`` as ztunnel reports it (``waypoint.telemetry.metrics``).

Labels are the ztunnel's set (``traffic_labels``), filled as the HTTP side does: the source from the
tunnel's peer, the destination from the endpoint dialled, the service from the VIP dialled.
"""

from __future__ import annotations

from typing import Any

from waypoint.l4.relay import Relay
from waypoint.l7.filter import DownstreamInfo
from waypoint.l7.upstream import UpstreamTarget
from waypoint.telemetry.metrics import DEFAULT_CLUSTER, TcpMetrics, TrafficLabels, traffic_labels


class WaypointTcpMetrics:
    """Counts the waypoint's relayed TCP connections on ``metrics`` (the role's registry)."""

    def __init__(self, metrics: TcpMetrics, cluster: str = DEFAULT_CLUSTER) -> None:
        self.metrics = metrics
        self.cluster = cluster

    def labels(self, info: DownstreamInfo, target: UpstreamTarget | None) -> TrafficLabels:
        service: Any = getattr(info, "service", None)  # AuthzDownstream carries the dialled Service
        return traffic_labels(
            reporter="waypoint",
            source=info.source_workload,
            source_principal=info.peer_identity,
            destination=(target.workload if target is not None else None) or info.destination_workload,
            destination_principal=target.identity if target is not None else None,
            service=service,
            mtls=info.peer_identity is not None,
            cluster=self.cluster,
        )

    def connected(self, relay: Relay, info: DownstreamInfo, target: UpstreamTarget) -> None:
        """The upstream is up: count the connection opened, and closed with its bytes when it ends."""
        record = self.metrics.open(self.labels(info, target))
        relay.on_done = lambda r: record.close(r.bytes_up, r.bytes_down)

    def failed(self, info: DownstreamInfo, target: UpstreamTarget | None) -> None:
        """No upstream (none healthy, or the dial failed)."""
        self.metrics.connection_failed(self.labels(info, target))
