"""``waypoint controller``: make and keep a waypoint Deployment for every Gateway of class istio-waypoint.

``waypoint controller --kubernetes [KUBECONFIG] [--image IMAGE] [--namespace-filter NS ...]``: in a pod,
``--kubernetes`` alone uses the service account (``deploy/controller.yaml``). Readiness on 15021
(``/healthz/ready``) as the other roles: ready once Gateways and every rendered kind have been listed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os

from waypoint.controller.settings import DEFAULT_IMAGE, ControllerSettings

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("controller", help="deploy a waypoint for every Gateway of class istio-waypoint")
    p.add_argument("--kubernetes", nargs="?", const="", required=True, metavar="KUBECONFIG",
                   help="the API server: in-cluster service account, or this kubeconfig")
    p.add_argument("--image", default=os.environ.get("WAYPOINT_IMAGE", DEFAULT_IMAGE),
                   help="the waypoint image to run (default: $WAYPOINT_IMAGE, else %(default)s)")
    p.add_argument("--namespace-filter", nargs="+", default=[], metavar="NS",
                   help="only Gateways in these namespaces (default: every namespace)")
    p.add_argument("--replicas", type=int, help="spec.replicas of each waypoint (default: unset, scale freely)")
    p.add_argument("--concurrency", type=int, default=2, help="waypoint worker processes per pod")
    p.add_argument("--cpu-request", default="100m")
    p.add_argument("--memory-request", default="64Mi")
    p.add_argument("--cert-csi-driver", default="csi.spiffe.io",
                   help="CSI driver mounting Istio's cert-chain.pem/key.pem/root-cert.pem in each waypoint")
    p.add_argument("--mesh-reader-role", default="waypoint-mesh-reader",
                   help="ClusterRole bound to each waypoint's service account (deploy/waypoint-rbac.yaml)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--readiness", default="0.0.0.0:15021", metavar="HOST:PORT")
    p.set_defaults(func=main)


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    return ControllerSettings(
        image=args.image, replicas=args.replicas, cpu_request=args.cpu_request, memory_request=args.memory_request,
        concurrency=args.concurrency, cert_csi_driver=args.cert_csi_driver, mesh_reader_role=args.mesh_reader_role,
        cluster_domain=args.cluster_domain,
    )


def main(args: argparse.Namespace) -> int:
    from waypoint.roles.runtime import run

    return run(lambda stop: _serve(args, stop))


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from waypoint.controller.controller import WaypointController
    from waypoint.mesh.kubeapi.client import KubeClient
    from waypoint.mesh.kubeapi.config import KubeConfigError, from_kubeconfig, in_cluster
    from waypoint.roles.runtime import split_host_port
    from waypoint.telemetry.admin import HttpEndpoint, readiness_routes

    try:
        config = from_kubeconfig(args.kubernetes) if args.kubernetes else in_cluster()
    except KubeConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    client = KubeClient(config)
    controller = WaypointController(client, settings_from(args), namespaces=args.namespace_filter)
    readiness = HttpEndpoint(readiness_routes(controller.pending), "readiness")
    await readiness.listen(*split_host_port(args.readiness, 15021))
    log.info("waypoint controller: %s (%s), image %s, namespaces %s", config.server, config.origin or "config",
             args.image, ", ".join(args.namespace_filter) or "all")
    task = asyncio.get_running_loop().create_task(controller.run(), name="waypoint-controller")
    stopped = asyncio.get_running_loop().create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # a crash of the loop surfaces here
            return 1
        return 0
    finally:
        for t in (task, stopped):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, stopped, return_exceptions=True)
        await readiness.close()
        await client.aclose()
