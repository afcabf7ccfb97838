"""Istio's TCP metrics, as ztunnel emits them, on an injected registry.

Names and labels: facts §3.3 (``IO:content/en/docs/reference/config/metrics/index.md``) and
ztunnel's ``CommonTrafficLabels`` (``ZT:src/proxy/metrics.rs``): every label is always present,
unknown values are ``"unknown"``, ``response_flags`` is ``-`` / ``DENY`` / ``CONNECT``.
``received_bytes`` is the request direction (client → server), ``sent_bytes`` the response
direction (server → client), seen from the reporting proxy.

Hot path: nothing here runs per chunk. The relay counts bytes in plain ints; a
:class:`ConnectionRecord` adds the delta to the Prometheus counters when the connection ends
or when the role's periodic flush asks (long-lived connections still show progress).

Besides Istio's series there is one of ours, ``waypoint_refusals_total{role, reason}``:
handshake, identity and authority refusals that never became a connection, for operators
and tests to see *why* something was turned away.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from waypoint.hbone.headers import Baggage

UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"  # Istio's default cluster ID (CLUSTER_ID when unset)

# Canonical service/revision labels, in Istio's order of preference
# (IS:pkg/model/labels, "canonical name" and "canonical revision").
_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")

FLAG_NONE = "-"
FLAG_DENY = "DENY"  # AuthorizationPolicyDenied
FLAG_CONNECT = "CONNECT"  # ConnectionFailure

MTLS = "mutual_tls"


@dataclass(frozen=True, slots=True)
class TrafficLabels:
    """The label set of Istio's TCP metrics; field order is the exposition order."""

    reporter: str = "source"  # source | destination | waypoint
    source_workload: str = UNKNOWN
    source_canonical_service: str = UNKNOWN
    source_canonical_revision: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    source_app: str = UNKNOWN
    source_version: str = UNKNOWN
    source_cluster: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_service_namespace: str = UNKNOWN
    destination_service_name: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_canonical_service: str = UNKNOWN
    destination_canonical_revision: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_app: str = UNKNOWN
    destination_version: str = UNKNOWN
    destination_cluster: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = FLAG_NONE
    connection_security_policy: str = UNKNOWN  # mutual_tls | unknown

    def values(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in LABEL_NAMES)


LABEL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrafficLabels))


def _first_label(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


def workload_name(pod_name: str, labels: Mapping[str, str]) -> str:
    """The owning workload's name: a Deployment's pods are ``<deploy>-<pod-template-hash>-<id>``."""
    template_hash = labels.get("pod-template-hash")
    if template_hash and f"-{template_hash}-" in pod_name:
        return pod_name.rsplit(f"-{template_hash}-", 1)[0]
    return pod_name


def canonical_service(pod_name: str, labels: Mapping[str, str]) -> str:
    """Istio's canonical service: the first canonical-name label, else the workload's name."""
    return _first_label(labels, _CANONICAL_NAME_LABELS) or workload_name(pod_name, labels) or UNKNOWN


def canonical_revision(labels: Mapping[str, str]) -> str:
    """Istio's canonical revision: the first canonical-revision label, else ``latest``."""
    return _first_label(labels, _CANONICAL_REVISION_LABELS) or "latest"


def _derived(prefix: str, baggage: Baggage) -> dict[str, str]:
    """A peer we cannot look up, described by its own baggage (ztunnel's ``DerivedWorkload``)."""
    out = {
        f"{prefix}_workload": baggage.workload_name,
        f"{prefix}_canonical_service": baggage.service,
        f"{prefix}_canonical_revision": baggage.version,
        f"{prefix}_workload_namespace": baggage.namespace,
        f"{prefix}_app": baggage.service,
        f"{prefix}_version": baggage.version,
        f"{prefix}_cluster": baggage.cluster,
    }
    return {key: value for key, value in out.items() if value}


def _side(
    prefix: str, workload: Any, principal: str | None, cluster: str, baggage: Baggage | None = None
) -> dict[str, str]:
    out: dict[str, str] = {}
    if principal:
        out[f"{prefix}_principal"] = principal
    if workload is None:
        if baggage is not None:
            out.update(_derived(prefix, baggage))
        return out
    labels: Mapping[str, str] = getattr(workload, "labels", {}) or {}
    name = getattr(workload, "name", "") or ""
    canonical = canonical_service(name, labels)
    revision = canonical_revision(labels)
    out.update(
        {
            f"{prefix}_workload": workload_name(name, labels) or UNKNOWN,
            f"{prefix}_canonical_service": canonical,
            f"{prefix}_canonical_revision": revision,
            f"{prefix}_workload_namespace": getattr(workload, "namespace", "") or UNKNOWN,
            f"{prefix}_app": canonical,
            f"{prefix}_version": revision,
            f"{prefix}_cluster": cluster,
        }
    )
    return out


def traffic_labels(
    *,
    reporter: str,
    source: Any = None,
    source_principal: str | None = None,
    destination: Any = None,
    destination_principal: str | None = None,
    service: Any = None,
    mtls: bool = False,
    cluster: str = DEFAULT_CLUSTER,
    source_baggage: Baggage | None = None,
) -> TrafficLabels:
    """Labels from model objects (``waypoint.mesh.model.Workload`` / ``Service``, or None).

    As ztunnel: ``source_principal`` is only the identity proven by mTLS (or, on the source
    side, the identity we present); ``destination_principal`` is the expected identity. A
    source we cannot look up is described by the ``baggage`` it sent, when it sent one.
    """
    values: dict[str, str] = {
        "reporter": reporter,
        "connection_security_policy": MTLS if mtls else UNKNOWN,
    }
    values.update(_side("source", source, source_principal, cluster, source_baggage))
    values.update(_side("destination", destination, destination_principal, cluster))
    if service is not None:
        values["destination_service"] = getattr(service, "hostname", "") or UNKNOWN
        values["destination_service_name"] = getattr(service, "name", "") or UNKNOWN
        values["destination_service_namespace"] = getattr(service, "namespace", "") or UNKNOWN
    return TrafficLabels(**values)


class TcpMetrics:
    """Istio's TCP counters plus our refusal counter, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def traffic(name: str, documentation: str) -> Counter:
            """A counter with Istio's traffic labels (prometheus_client appends "_total" to its name)."""
            return Counter(name, documentation, LABEL_NAMES, registry=registry)

        self.opened = traffic("istio_tcp_connections_opened", "The total number of TCP connections opened")
        self.closed = traffic("istio_tcp_connections_closed", "The total number of TCP connections closed")
        self.failed = traffic(
            "istio_tcp_connections_failed", "The total number of TCP connections that failed to establish (unstable)"
        )
        self.received_bytes = traffic(
            "istio_tcp_received_bytes", "The size of total bytes received during request in case of a TCP connection"
        )
        self.sent_bytes = traffic(
            "istio_tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection"
        )
        self.refusals = Counter(
            "waypoint_refusals",
            "Connections or tunnels this proxy refused before forwarding, by reason (ours, not Istio's)",
            ("role", "reason"), registry=registry,
        )

    def refused(self, role: str, reason: str) -> None:
        self.refusals.labels(role, reason).inc()

    def open(self, labels: TrafficLabels) -> ConnectionRecord:
        """A connection was established (upstream reached): count it opened."""
        record = ConnectionRecord(self, labels)
        self.opened.labels(*record.label_values).inc()
        return record

    def connection_failed(self, labels: TrafficLabels, flag: str = FLAG_CONNECT) -> None:
        """A connection that never got its upstream (ztunnel: opened, then failed and closed)."""
        values = replace(labels, response_flags=flag).values()
        self.opened.labels(*values).inc()
        self.failed.labels(*values).inc()
        self.closed.labels(*values).inc()


class ConnectionRecord:
    """Per-connection metric state: byte counts already added, so a flush adds only the delta."""

    __slots__ = ("_metrics", "_recv_done", "_sent_done", "closed", "label_values", "opened_at")

    def __init__(self, metrics: TcpMetrics, labels: TrafficLabels) -> None:
        self._metrics = metrics
        self.label_values = labels.values()
        self._recv_done = 0
        self._sent_done = 0
        self.closed = False
        self.opened_at = time.monotonic()

    def flush(self, received: int, sent: int) -> None:
        """Add the bytes counted since the last flush (``received``/``sent`` are running totals)."""
        m = self._metrics
        if received > self._recv_done:
            m.received_bytes.labels(*self.label_values).inc(received - self._recv_done)
            self._recv_done = received
        if sent > self._sent_done:
            m.sent_bytes.labels(*self.label_values).inc(sent - self._sent_done)
            self._sent_done = sent

    def close(self, received: int, sent: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush(received, sent)
        self._metrics.closed.labels(*self.label_values).inc()
