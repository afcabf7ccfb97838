"""Peer metadata carried in ``baggage``: what a ztunnel tells its peer about its own workload.

ztunnel sends the source workload's baggage on every CONNECT (``ZT:src/proxy/outbound.rs``
``create_hbone_request``) and, since ``ENABLE_RESPONSE_BAGGAGE`` (default on), the destination
workload's on the 200 (``ZT:src/proxy/inbound.rs`` ``build_response``; facts §1.4). The receiver
uses it for the peer's metric labels where it cannot look the peer up itself (ztunnel's
``DerivedWorkload``). The field values follow the same canonical labels as our metrics.
"""

from __future__ import annotations

from waypoint.hbone.headers import build_baggage
from waypoint.mesh.model import Workload
from waypoint.telemetry.metrics import canonical_revision, canonical_service, workload_name


def workload_baggage(workload: Workload, cluster: str) -> str:
    """The ``baggage`` value describing ``workload`` (``ZT:src/baggage.rs`` ``baggage_header_val``)."""
    labels = workload.labels
    return build_baggage(
        cluster=cluster,
        namespace=workload.namespace,
        workload_type="deployment" if "pod-template-hash" in labels else "pod",
        workload_name=workload_name(workload.name, labels),
        service=canonical_service(workload.name, labels),
        version=canonical_revision(labels),
    )
