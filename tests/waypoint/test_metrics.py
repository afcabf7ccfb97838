"""Istio's request metrics at the waypoint, through real traffic.

Labels as Istio's waypoint fills them (``istio/proxy`` ``istio_stats.cc`` ``populatePeerInfo``,
``Reporter::ServerGateway``; facts §3.3): the source from the downstream's identity and address, the
destination from the endpoint the router chose, ``response_flags`` from the router (Envoy's ``UH`` for
no healthy upstream), gRPC status from the trailers, and the three histograms with Envoy's buckets.
Then the CLI: ``waypoint waypoint --concurrency 2`` serves on its metrics port the sum over both
workers, and leaves no files behind on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.support.apps import tcp_echo
from tests.support.wait import wait_for
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.l7.filter import DownstreamInfo, RequestContext
from waypoint.l7.message import RequestHead
from waypoint.l7.response_flags import add_flag
from waypoint.telemetry.request_metrics import REQUEST_LABELS
from waypoint.telemetry.worker_metrics import fetch, merge_expositions, socket_path
from waypoint.testing.certs import dev_ca, identity, workload_cert

from . import manifests as m
from .apps import EchoApp
from .clients import socks_forwarder
from .conftest import MeshFactory

pytestmark = pytest.mark.timeout(60)

GRPC_IP, GRPC_VIP, GRPC_PORT = m.ip("12.40"), m.ip("13.40"), 7071
EMPTY_VIP = m.ip("13.41")
DEAD_IP, DEAD_VIP = m.ip("12.42"), m.ip("13.42")
Sample = tuple[dict[str, str], float]


def samples(registry: CollectorRegistry, name: str) -> list[Sample]:
    return [(dict(s.labels), s.value) for f in registry.collect() for s in f.samples if s.name == name]


def one(found: list[Sample], **labels: str) -> Sample:
    """The single sample whose labels include ``labels``."""
    matching = [(lbl, v) for lbl, v in found if all(lbl.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (labels, found)
    return matching[0]


def series_of(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "le"}


async def test_routed_request_labels_and_histograms(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(m.standard())
    registry = mesh.dev.registry
    body = b"x" * 1500
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.post(f"http://{m.V1_VIP}/upload", content=body)
    assert r.status_code == 200
    await wait_for(lambda: samples(registry, "istio_requests_total"), what="the request is recorded")

    labels, count = one(samples(registry, "istio_requests_total"), reporter="waypoint")
    assert count == 1
    assert labels == labels | {
        "source_workload": "sleep", "source_workload_namespace": "app", "source_principal": m.CLIENT_ID,
        "source_app": "sleep", "source_canonical_service": "sleep", "source_canonical_revision": "latest",
        "source_cluster": "Kubernetes",
        "destination_workload": "echo-v1", "destination_workload_namespace": "app",
        "destination_principal": m.spiffe("app", "echo"), "destination_app": "echo", "destination_version": "v1",
        "destination_canonical_service": "echo", "destination_canonical_revision": "v1",
        "destination_service": "echo-v1.app.svc.cluster.local", "destination_service_name": "echo-v1",
        "destination_service_namespace": "app", "destination_cluster": "Kubernetes",
        "request_protocol": "http", "response_code": "200", "response_flags": "-", "grpc_response_status": "",
        "connection_security_policy": "mutual_tls",
    }
    assert set(labels) == set(REQUEST_LABELS), "every Istio label is present"
    # the histograms moved, on the same series; sizes are body bytes (Envoy's buckets, le="0.5".."3.6e+06")
    duration = samples(registry, "istio_request_duration_milliseconds_count")
    assert one(duration, **labels)[1] == 1
    assert one(samples(registry, "istio_request_bytes_sum"), **labels)[1] == len(body)
    assert one(samples(registry, "istio_response_bytes_sum"), **labels)[1] == len(r.content)
    buckets = [lbl["le"] for lbl, _ in samples(registry, "istio_request_bytes_bucket")]
    assert buckets[:3] == ["0.5", "1", "5"] and buckets[-2:] == ["3.6e+06", "+Inf"]
    assert one(samples(registry, "istio_request_bytes_bucket"), **labels, le="1000")[1] == 0
    assert one(samples(registry, "istio_request_bytes_bucket"), **labels, le="2500")[1] == 1


async def test_no_endpoints_is_503_uh(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    empty = m.service("empty", EMPTY_VIP, [("http", m.HTTP_PORT, m.APP_PORT)], selector={"app": "nobody"})
    mesh = await make_mesh(m.standard(empty))
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{EMPTY_VIP}/")
    assert r.status_code == 503 and r.content == b"no healthy upstream"
    registry = mesh.dev.registry
    await wait_for(lambda: samples(registry, "istio_requests_total"), what="the request is recorded")
    labels, count = one(samples(registry, "istio_requests_total"), response_code="503")
    assert count == 1
    assert labels["response_flags"] == "UH"
    assert labels["destination_service"] == "empty.app.svc.cluster.local"
    assert labels["destination_workload"] == "unknown"  # no endpoint was chosen
    assert labels["source_workload"] == "sleep"


async def test_connect_failure_after_retries_is_uf_urx(make_mesh: MeshFactory) -> None:
    """Nothing listens at the endpoint: Istio's default retries (2) run out; Envoy prints ``UF,URX``."""
    mesh = await make_mesh(m.standard(
        m.pod("dead", DEAD_IP, ports=(m.APP_PORT,)),
        m.service("dead", DEAD_VIP, [("http", m.HTTP_PORT, m.APP_PORT)]),
    ))
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(f"http://{DEAD_VIP}/")
    assert r.status_code == 503
    registry = mesh.dev.registry
    await wait_for(lambda: samples(registry, "istio_requests_total"), what="the request is recorded")
    labels, _ = one(samples(registry, "istio_requests_total"), response_code="503")
    assert (labels["response_flags"], labels["destination_workload"]) == ("UF,URX", "dead")


@pytest.fixture
def grpc_server() -> Iterator[None]:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today")
        return b"echo:" + request

    ident = (lambda b: b, lambda b: b)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary, *ident)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"{GRPC_IP}:{GRPC_PORT}")
    server.start()
    yield
    server.stop(None)


async def test_grpc_status_from_trailers(make_mesh: MeshFactory, grpc_server: None) -> None:
    mesh = await make_mesh(m.standard(
        m.pod("grpc-echo", GRPC_IP, ports=(GRPC_PORT,)),
        m.service("grpc-echo", GRPC_VIP, [("grpc", GRPC_PORT, GRPC_PORT)]),
    ))
    async with socks_forwarder(mesh.socks, (GRPC_VIP, GRPC_PORT), m.CLIENT_IP) as local:
        def calls() -> None:
            with grpc.insecure_channel(f"{local[0]}:{local[1]}") as ch:
                assert ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=10) == b"echo:hi"
                with pytest.raises(grpc.RpcError) as info:
                    ch.unary_unary("/test.Echo/Unary")(b"fail", timeout=10)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]

        await asyncio.to_thread(calls)
    registry = mesh.dev.registry
    await wait_for(lambda: sum(v for _, v in samples(registry, "istio_requests_total")) == 2, what="2 requests")
    found = samples(registry, "istio_requests_total")
    assert one(found, grpc_response_status="0")[0]["request_protocol"] == "grpc"
    failed, _ = one(found, grpc_response_status="9")  # FAILED_PRECONDITION, from the trailers
    assert (failed["response_code"], failed["destination_workload"]) == ("200", "grpc-echo")


def test_merge_sums_samples_and_keeps_the_earliest_created() -> None:
    a = "# TYPE x counter\nx_total{k=\"1\"} 2.0\nx_created{k=\"1\"} 50.0\n"
    b = "# TYPE x counter\nx_total{k=\"1\"} 3.0\nx_created{k=\"1\"} 40.0\nx_total{k=\"2\"} 1.0\n"
    merged = {(s.name, tuple(s.labels.items())): s.value
              for f in text_string_to_metric_families(merge_expositions([a, b]).decode()) for s in f.samples}
    assert merged == {("x_total", (("k", "1"),)): 5.0, ("x_created", (("k", "1"),)): 40.0,
                      ("x_total", (("k", "2"),)): 1.0}


@pytest.mark.parametrize(("added", "expected"), [
    (["UF"], "UF"), (["URX", "UF"], "UF,URX"), (["UH", "UH"], "UH"), (["DC", "UT"], "UT,DC"),
])
def test_response_flags_in_envoys_order(added: list[str], expected: str) -> None:
    ctx = RequestContext(DownstreamInfo(), RequestHead("GET", "/", "a", []), 0.0)
    for flag in added:
        add_flag(ctx, flag)
    assert ctx.response_flags == expected


# ---- the CLI: two worker processes, one metrics port ----------------------------------------------
WAYPOINT = str(Path(sys.executable).with_name("waypoint"))
WP_IP, APP_VIP, APP_IP, APP_PORT = m.ip("16.1"), m.ip("16.2"), m.ip("16.3"), 8080
TCP_VIP, TCP_IP, TCP_PORT = m.ip("16.4"), m.ip("16.5"), 9000

CLI_CONFIG = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: plain}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {WP_IP}}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: plain, labels: {{app: echo}}}}
spec: {{serviceAccountName: echo, nodeName: dev, containers: [{{name: main}}]}}
status: {{phase: Running, podIP: {APP_IP}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: plain}}
spec: {{clusterIP: {APP_VIP}, selector: {{app: echo}}, ports: [{{name: http, port: 80, targetPort: {APP_PORT}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp-echo, namespace: plain, labels: {{app: tcp-echo}}}}
spec: {{serviceAccountName: tcp-echo, nodeName: dev, containers: [{{name: main}}]}}
status: {{phase: Running, podIP: {TCP_IP}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: plain}}
spec:
  clusterIP: {TCP_VIP}
  selector: {{app: tcp-echo}}
  ports: [{{name: tcp, port: {TCP_PORT}, targetPort: {TCP_PORT}}}]
"""


class _HttpOnce(asyncio.Protocol):
    """One ``GET`` over a tunnel; done when the whole (content-length) response is in."""

    def __init__(self) -> None:
        self.data = b""
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"GET /n HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        if sep and not self.done.done():
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            if len(body) >= length:
                self.done.set_result(self.data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed early: {self.data!r}"))


class _EchoOnce(asyncio.Protocol):
    """Sends ``payload`` over a TCP tunnel, half-closes once it is echoed, done when the tunnel ends."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.data = b""
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) == len(self.payload):
            self.transport.write_eof()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.data)


def _tunnel_key(cert: Any) -> PoolKey:
    return PoolKey(cert.identity, frozenset({identity("shop", "waypoint")}), (WP_IP, 15008))


async def _tcp_through(cert: Any, payload: bytes) -> bytes:
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server)
    try:
        _stream, proto = await pool.open(_tunnel_key(cert), f"{TCP_VIP}:{TCP_PORT}", (),
                                         lambda: _EchoOnce(payload))
        return await asyncio.wait_for(proto.done, 10)  # type: ignore[attr-defined, no-any-return]
    finally:
        await pool.close()


async def _request_through(cert: Any) -> bytes:
    """A new HBONE connection per request, so the kernel's SO_REUSEPORT hash spreads them."""
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server)
    try:
        _stream, proto = await pool.open(_tunnel_key(cert), f"{APP_VIP}:80", (), _HttpOnce)
        return await asyncio.wait_for(proto.done, 10)  # type: ignore[attr-defined, no-any-return]
    finally:
        await pool.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """``wait_for`` for a check that has to await (a scrape)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what} not met in {timeout}s"
        await asyncio.sleep(0.05)


def _total(text: str, name: str = "istio_requests_total") -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and s.labels["reporter"] == "waypoint")


async def test_cli_two_workers_report_the_sum_and_clean_up(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mesh.yaml").write_text(CLI_CONFIG)
    (tmp_path / "tmp").mkdir()
    dev_ca().save(tmp_path / "ca")
    app = await EchoApp("echo", APP_IP, APP_PORT).start()
    tcp_app = await asyncio.start_server(tcp_echo, TCP_IP, TCP_PORT)
    proc = subprocess.Popen(
        [WAYPOINT, "waypoint", "--config", str(tmp_path / "config"), "--gateway", "shop/waypoint",
         "--ca-dir", str(tmp_path / "ca"), "--readiness", f"{WP_IP}:15021", "--admin", f"{WP_IP}:15000",
         "--metrics", f"{WP_IP}:15020", "--concurrency", "2"],
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},  # where the workers' metrics sockets go
    )
    metrics_url = f"http://{WP_IP}:15020/stats/prometheus"
    try:
        async def ready() -> bool:
            assert proc.poll() is None, f"waypoint exited with {proc.returncode}"
            return (await asyncio.to_thread(_get, f"http://{WP_IP}:15021/healthz/ready"))[0] == 200

        await eventually(ready, "readiness")
        (folder,) = (tmp_path / "tmp").iterdir()
        await wait_for(lambda: Path(socket_path(str(folder), 1)).exists(), what="worker 1's metrics socket")

        n = 24
        cert = workload_cert("shop", "sleep")
        answers = await asyncio.gather(*(_request_through(cert) for _ in range(n)))
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        assert len(app.paths()) == n

        totals: dict[str, float] = {}

        async def scraped_all() -> bool:
            status, text = await asyncio.to_thread(_get, metrics_url)
            totals["sum"] = _total(text) if status == 200 else -1
            totals["worker1"] = _total(await fetch(socket_path(str(folder), 1)))
            return totals["sum"] == n

        await eventually(scraped_all, f"/stats/prometheus sums {n} requests")
        assert 0 < totals["worker1"] < n, f"both workers served requests: {totals}"  # P(fail) = 2**-23

        # opaque TCP through the waypoint: Istio's TCP metrics, reporter waypoint, summed the same way
        payload = b"t" * 3000
        assert await _tcp_through(cert, payload) == payload

        async def tcp_counted() -> bool:
            status, text = await asyncio.to_thread(_get, metrics_url)
            return status == 200 and _total(text, "istio_tcp_connections_closed_total") == 1
        await eventually(tcp_counted, "the TCP connection is counted closed")
        text = (await asyncio.to_thread(_get, metrics_url))[1]
        assert _total(text, "istio_tcp_connections_opened_total") == 1
        assert _total(text, "istio_tcp_received_bytes_total") == len(payload)
        assert _total(text, "istio_tcp_sent_bytes_total") == len(payload)
        assert _total(text, "istio_requests_total") == n  # the TCP tunnel is no HTTP request

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert not folder.exists(), "the metrics sockets' folder is removed"
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await app.stop()
        tcp_app.close()
