"""``waypoint waypoint``: run one waypoint (a Gateway of class ``istio-waypoint``) from a config folder."""

from __future__ import annotations

import argparse
import asyncio
import logging

from waypoint.mesh.state import MeshState
from waypoint.roles.runtime import (
    certificate_provider,
    folder_source,
    run,
    split_host_port,
    watch_certificate_files,
)
from waypoint.roles.waypoint import HBONE_PORT, WaypointRole, WaypointSettings, waypoint_address
from waypoint.roles.workers import run_workers, worker_count
from waypoint.telemetry.admin import HttpEndpoint, config_dump_routes, readiness_routes

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("waypoint", help="run a waypoint (L7 proxy) for a Gateway of class istio-waypoint")
    p.add_argument("--config", required=True, metavar="DIR", help="folder of Kubernetes YAML")
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
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="worker processes sharing the HBONE port (0: one per CPU, as Envoy)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    namespace, _, name = args.gateway.partition("/")
    if not name:
        log.error("--gateway must be NS/NAME, got %r", args.gateway)
        return 2
    workers = worker_count(args.concurrency)
    return run_workers(workers, lambda index: run(lambda stop: _serve(args, namespace, name, stop, index, workers)))


async def _serve(
    args: argparse.Namespace, namespace: str, name: str, stop: asyncio.Event, index: int = 0, workers: int = 1
) -> int:
    source = folder_source(args.config)
    state = MeshState(source.reload(), trust_domain=args.trust_domain)
    wp = state.waypoint(namespace, name)
    if wp is None:
        log.warning("no waypoint Gateway %s/%s in %s (yet); serving anyway", namespace, name, args.config)
    address = args.address or (waypoint_address(state, wp) if wp else None) or "0.0.0.0"
    settings = WaypointSettings(namespace, name, address, args.port, args.trust_domain,
                                root_namespace=args.root_namespace)
    certificates = certificate_provider(args.ca_dir, args.cert_dir, args.trust_domain)
    role = WaypointRole(settings, state, certificates)
    await role.start(reuse_port=workers > 1)
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
    return 0
