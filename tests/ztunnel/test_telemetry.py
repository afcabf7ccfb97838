"""Istio TCP metric names/labels and the admin endpoints, scraped over HTTP (facts §3.3, §1.1)."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from waypoint.mesh.model import Service, Workload
from waypoint.telemetry.admin import HttpEndpoint, config_dump_routes, metrics_routes, readiness_routes
from waypoint.telemetry.metrics import FLAG_CONNECT, LABEL_NAMES, TcpMetrics, traffic_labels, workload_name

HOST = "127.0.8.3"


def pod(name: str, ns: str, labels: dict[str, str]) -> Workload:
    return Workload(
        uid=f"Kubernetes//v1/Pod/{ns}/{name}", name=name, namespace=ns, ips=("127.0.8.10",),
        service_account="default", node="n", labels=labels, phase="Running", ready=True,
        dataplane_mode=None, use_waypoint=None,
    )


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_workload_name_strips_replicaset_suffix() -> None:
    assert workload_name("echo-7d9f8b6c5-x2x4z", {"pod-template-hash": "7d9f8b6c5"}) == "echo"
    assert workload_name("standalone", {}) == "standalone"


def test_labels_from_model_objects() -> None:
    src = pod("sleep-55b6d9-abcde", "default", {"app": "sleep", "pod-template-hash": "55b6d9"})
    dst = pod("echo-1", "backend", {"app": "echo", "version": "v2"})
    svc = Service(name="echo", namespace="backend", hostname="echo.backend.svc.cluster.local", vips=(),
                  ports=(), selector=None, labels={}, use_waypoint=None)
    labels = traffic_labels(
        reporter="source", source=src, source_principal="spiffe://cluster.local/ns/default/sa/sleep",
        destination=dst, destination_principal="spiffe://cluster.local/ns/backend/sa/echo", service=svc,
        mtls=True,
    )
    assert labels.source_workload == "sleep" and labels.source_app == "sleep"
    assert labels.source_version == "latest"  # Istio's default canonical revision
    assert labels.destination_canonical_service == "echo" and labels.destination_version == "v2"
    assert labels.destination_service == "echo.backend.svc.cluster.local"
    assert labels.connection_security_policy == "mutual_tls" and labels.request_protocol == "tcp"
    unknown = traffic_labels(reporter="destination")
    assert unknown.source_workload == "unknown" and unknown.destination_service_name == "unknown"
    assert unknown.response_flags == "-"


async def test_metrics_scraped_over_http() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    labels = traffic_labels(reporter="destination", destination=pod("echo-1", "default", {"app": "echo"}),
                            mtls=True)
    record = metrics.open(labels)
    record.flush(received=1000, sent=10)
    record.close(received=1500, sent=30)
    record.close(received=9999, sent=9999)  # idempotent
    metrics.connection_failed(labels)
    metrics.refused("ztunnel", "authority_mismatch")
    pending = ["start"]
    endpoint = HttpEndpoint({**metrics_routes(registry), **readiness_routes(lambda: pending),
                             **config_dump_routes(lambda: {"workloads": ["echo-1"]})})
    server = await endpoint.listen(HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
        resp = await client.get("/healthz/ready")
        assert (resp.status_code, resp.text) == (503, "not ready, pending: start\n")
        pending.clear()
        resp = await client.get("/healthz/ready")
        assert (resp.status_code, resp.text) == (200, "ready\n")
        assert (await client.get("/config_dump")).json() == {"workloads": ["echo-1"]}
        assert (await client.get("/nope")).status_code == 404
        for path in ("/metrics", "/stats/prometheus"):
            resp = await client.get(path)
            assert resp.status_code == 200
            got = samples(resp.text)
            ok = [(lbl, v) for lbl, v in got["istio_tcp_connections_opened_total"] if lbl["response_flags"] == "-"]
            assert len(ok) == 1 and ok[0][1] == 1.0
            assert set(ok[0][0]) == set(LABEL_NAMES)
            assert ok[0][0]["reporter"] == "destination" and ok[0][0]["destination_workload"] == "echo-1"
            assert ok[0][0]["source_workload"] == "unknown"
            assert got["istio_tcp_received_bytes_total"][0][1] == 1500
            assert got["istio_tcp_sent_bytes_total"][0][1] == 30
            assert [v for lbl, v in got["istio_tcp_connections_closed_total"] if lbl["response_flags"] == "-"] == [1]
            failed = got["istio_tcp_connections_failed_total"]
            assert failed[0][0]["response_flags"] == FLAG_CONNECT and failed[0][1] == 1
            assert got["waypoint_refusals_total"] == [({"role": "ztunnel", "reason": "authority_mismatch"}, 1.0)]
    await endpoint.close()
