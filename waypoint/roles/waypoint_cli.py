"""``waypoint waypoint``: run one waypoint (a Gateway of class ``istio-waypoint``) from a config folder
or the API server (``--kubernetes``).

Ports as istiod's waypoint Deployment (facts §2.2): 15008 HBONE, 15021 readiness, 15020 Prometheus
(``/metrics``, ``/stats/prometheus``), 15000 admin on localhost. With ``--concurrency`` above 1 the
metrics port shows the sum over all workers (``waypoint.telemetry.worker_metrics``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from waypoint.mesh.folder import FolderSource
from waypoint.mesh.kubeapi import KubeSource
from waypoint.mesh.kubeapi.config import KubeConfigError
from waypoint.mesh.model import MeshSnapshot
from waypoint.mesh.state import MeshState
from waypoint.roles.runtime import (
    add_config_source_arguments,
    certificate_provider,
    open_mesh_source,
    run,
    split_host_port,
    watch_certificate_files,
)
from waypoint.roles.waypoint import HBONE_PORT, WaypointRole, WaypointSettings, waypoint_address
from waypoint.roles.workers import run_workers, worker_count
from waypoint.telemetry.admin import HttpEndpoint, config_dump_routes, metrics_routes, readiness_routes
from waypoint.telemetry.worker_metrics import merged_metrics_routes, serve_registry, socket_path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("waypoint", help="run a waypoint (L7 proxy) for a Gateway of class istio-waypoint")
    add_config_source_arguments(p)  # --config DIR | --kubernetes [KUBECONFIG]
    p.add_argument("--gateway", required=True, metavar="NS/NAME", help="the waypoint Gateway to serve")
    p.add_argument("--address", help="IP to serve HBONE on (default: the Gateway's address, else 0.0.0.0)")
    p.add_argument("--port", type=int, default=HBONE_PORT)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-namespace", default="istio-system", metavar="NS",
                   help="AuthorizationPolicies here without a selector apply mesh-wide (Istio's rootNamespace)")
    p.add_argument("--ca-dir", help="dev CA folder (created if missing); mints this waypoint's certificate")
    p.add_argument("--cert-dir", help="Istio mounted certificate files (cert-chain.pem, key.pem, root-cert.pem)")
    p.add_argument("--readiness", default="0.0.0.0:15021", metavar="HOST:PORT")
    p.add_argument("--admin", default="127.0.0.1:15000", metavar="HOST:PORT")
    p.add_argument("--metrics", default="0.0.0.0:15020", metavar="HOST:PORT",
                   help="Prometheus /metrics and /stats/prometheus, summed over the workers ('off': none)")
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="worker processes sharing the HBONE port (0: one per CPU, as Envoy)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    namespace, _, name = args.gateway.partition("/")
    if not name:
        log.error("--gateway must be NS/NAME, got %r", args.gateway)
        return 2
    workers = worker_count(args.concurrency)
    # the workers' private metrics sockets: made before forking, removed once every worker is gone
    folder = tempfile.mkdtemp(prefix="waypoint-metrics-") if args.metrics != "off" and workers > 1 else None
    parent = os.getpid()
    try:
        return run_workers(
            workers, lambda index: run(lambda stop: _serve(args, namespace, name, stop, index, workers, folder))
        )
    finally:
        if folder is not None and os.getpid() == parent:  # (a worker leaves by os._exit, never here)
            shutil.rmtree(folder, ignore_errors=True)


async def _start_metrics(
    args: argparse.Namespace, registry: CollectorRegistry, index: int, workers: int, folder: str | None
) -> Callable[[], Awaitable[None]]:
    """Worker 0 serves HTTP (the sum over every worker); the others answer on their private socket.
    Returns what stops it."""
    if index > 0:
        assert folder is not None
        path = socket_path(folder, index)
        server = await serve_registry(registry, path)

        async def stop_socket() -> None:
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        return stop_socket
    if folder is None:
        endpoint = HttpEndpoint(metrics_routes(registry), "metrics")
    else:
        peers = [socket_path(folder, i) for i in range(1, workers)]
        endpoint = HttpEndpoint(merged_metrics_routes(registry, peers), "metrics")
    try:
        await endpoint.listen(*split_host_port(args.metrics, 15020))
    except OSError as exc:  # traffic matters more than its metrics: say so loudly and serve on
        log.error("metrics endpoint %s not served: %s", args.metrics, exc)
    return endpoint.close


async def _serve(
    args: argparse.Namespace, namespace: str, name: str, stop: asyncio.Event, index: int = 0, workers: int = 1,
    metrics_folder: str | None = None,
) -> int:
    try:
        async with open_mesh_source(args) as (source, snapshot):
            return await _serve_from(args, namespace, name, stop, index, workers, metrics_folder, source, snapshot)
    except KubeConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2


async def _serve_from(
    args: argparse.Namespace, namespace: str, name: str, stop: asyncio.Event, index: int, workers: int,
    metrics_folder: str | None, source: FolderSource | KubeSource, snapshot: MeshSnapshot,
) -> int:
    state = MeshState(snapshot, trust_domain=args.trust_domain)
    wp = state.waypoint(namespace, name)
    if wp is None:
        where = args.config or "the API server"
        log.warning("no waypoint Gateway %s/%s in %s (yet); serving anyway", namespace, name, where)
    address = args.address or (waypoint_address(state, wp) if wp else None) or "0.0.0.0"
    settings = WaypointSettings(namespace, name, address, args.port, args.trust_domain,
                                root_namespace=args.root_namespace)
    certificates = certificate_provider(args.ca_dir, args.cert_dir, args.trust_domain)
    registry = CollectorRegistry() if args.metrics != "off" else None
    role = WaypointRole(settings, state, certificates, registry=registry)
    await role.start(reuse_port=workers > 1)
    stop_metrics = None
    if registry is not None:
        stop_metrics = await _start_metrics(args, registry, index, workers, metrics_folder)
    ready = True
    endpoints = []
    if index == 0:  # one worker answers readiness and the admin port
        endpoints = [
            HttpEndpoint(readiness_routes(lambda: () if ready else ("start",)), "readiness"),
            HttpEndpoint(config_dump_routes(role.config_dump), "admin"),
        ]
        await endpoints[0].listen(*split_host_port(args.readiness, 15021))
        await endpoints[1].listen(*split_host_port(args.admin, 15000))
    watcher = asyncio.get_running_loop().create_task(
        source.watch(lambda snap: role.update(MeshState(snap, trust_domain=args.trust_domain)))
    )
    cert_watcher = watch_certificate_files(certificates, role.rotate)
    await stop.wait()
    ready = False
    watcher.cancel()
    if cert_watcher is not None:
        cert_watcher.cancel()
    await role.stop()
    for endpoint in endpoints:
        await endpoint.close()
    if stop_metrics is not None:
        await stop_metrics()
    return 0
