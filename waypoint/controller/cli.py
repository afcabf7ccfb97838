"""``waypoint controller``: make and keep a waypoint Deployment for every Gateway of class istio-waypoint.

``waypoint controller --kubernetes [KUBECONFIG] [--image IMAGE] [--namespace-filter NS ...]``: in a pod,
``--kubernetes`` alone uses the service account (``deploy/controller.yaml``). Readiness on 15021
(``/healthz/ready``) as the other roles: ready once Gateways and every rendered kind have been listed.

Leader election (``--leader-elect``, on by default) lets it run with several replicas: all watch and
are ready, the holder of the Lease ``--lease-namespace/--lease-name`` reconciles. It is on whatever
``--kubernetes`` points at, because a second copy started by hand against the same cluster (a
developer's kubeconfig) is exactly the case where two writers would fight; ``--no-leader-elect``
(``--leader-elect=false`` is not argparse's way) turns it off for a lone test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket

from waypoint.controller.lease import LeaseConfig
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
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="reconcile only while holding the Lease, so replicas > 1 is safe (default: on)")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE") or _sa_namespace(),
                   help="namespace of the Lease (default: $POD_NAMESPACE, else the service account's, "
                        "else waypoint-system)")
    p.add_argument("--lease-name", default=LEASE_NAME,
                   help="the Lease (default: %(default)s; istiod's own is istio-gateway-deployment)")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's holderIdentity (default: $POD_NAME, else the hostname)")
    p.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                   help="how long others wait after the last renewal before taking over")
    p.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS",
                   help="a leader that could not renew for this long stops")
    p.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS")
    p.set_defaults(func=main)


LEASE_NAME = "waypoint-gateway-deployment-controller"
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _sa_namespace() -> str:
    try:
        with open(SA_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "waypoint-system"
    except OSError:
        return "waypoint-system"


def lease_config_from(args: argparse.Namespace) -> LeaseConfig:
    """Raises ValueError for inconsistent timings (client-go's checks)."""
    return LeaseConfig(args.lease_namespace, args.lease_name, args.identity, args.lease_duration,
                       args.renew_deadline, args.retry_period)


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
    from waypoint.controller.leader import LeaseLeader
    from waypoint.mesh.kubeapi.client import KubeClient
    from waypoint.mesh.kubeapi.config import KubeConfigError, from_kubeconfig, in_cluster
    from waypoint.roles.runtime import split_host_port
    from waypoint.telemetry.admin import HttpEndpoint, readiness_routes

    try:
        config = from_kubeconfig(args.kubernetes) if args.kubernetes else in_cluster()
    except KubeConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        lease = lease_config_from(args) if args.leader_elect else None
    except ValueError as exc:
        log.error("cannot start: leader election: %s", exc)
        return 2
    client = KubeClient(config)
    leader = LeaseLeader(client, lease) if lease is not None else None
    controller = WaypointController(client, settings_from(args), namespaces=args.namespace_filter, leader=leader)
    readiness = HttpEndpoint(readiness_routes(controller.pending), "readiness")
    await readiness.listen(*split_host_port(args.readiness, 15021))
    log.info("waypoint controller: %s (%s), image %s, namespaces %s", config.server, config.origin or "config",
             args.image, ", ".join(args.namespace_filter) or "all")
    loop = asyncio.get_running_loop()
    task = loop.create_task(controller.run(), name="waypoint-controller")
    stopped = loop.create_task(stop.wait())
    tasks = [task, stopped]
    if leader is not None:
        tasks.append(loop.create_task(leader.run(), name="waypoint-controller-leader"))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks[::2]:  # the controller's and the election's loops end only by crashing
            if t.done():
                t.result()  # the crash surfaces here
                return 1
        return 0
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        if leader is not None:  # the work has stopped: hand the Lease over now, not in 15 s
            await leader.release()
        await readiness.close()
        await client.aclose()
