"""``waypoint ztunnel``: run the L4 node proxy for the pods of a config folder or of a cluster.

Example (every pod of the folder, dev identities, plain ``curl`` allowed)::

    waypoint ztunnel --config examples/mesh --dev --ca-dir /tmp/ca
    curl --socks5-hostname 127.0.0.1:15080 http://echo.default:8080/
    curl --interface 127.0.10.5 --socks5-hostname 127.0.0.1:15080 http://echo.default:8080/

In a cluster, ``--kubernetes`` (the pod's service account) or ``--kubernetes ~/.kube/config`` lists
and watches the API server instead of reading a folder (``waypoint/mesh/kubeapi/``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from waypoint.identity.certs import CertificateProvider
from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity
from waypoint.mesh.folder import FolderSource
from waypoint.mesh.kubeapi import KubeSource
from waypoint.mesh.kubeapi.config import KubeConfigError
from waypoint.mesh.model import HBONE_PORT, MeshSnapshot
from waypoint.original_source import OriginalSourceError, choose_original_source, parse_original_source
from waypoint.packet_mark import PacketMarkError, choose_mark, parse_mark
from waypoint.roles.runtime import (
    add_config_source_arguments,
    certificate_provider,
    open_mesh_source,
    run,
    split_host_port,
    watch_certificate_files,
)
from waypoint.roles.ztunnel import Address, ZtunnelRole, ZtunnelSettings

log = logging.getLogger(__name__)

_LISTENERS = (
    # (option, settings field, default, help)
    ("--listen-outbound", "outbound", "127.0.0.1:15001", "captured outbound (iptables REDIRECT target)"),
    ("--listen-socks5", "socks5", "127.0.0.1:15080", "SOCKS5 for uncaptured local traffic"),
    ("--listen-inbound-plaintext", "inbound_plaintext", "127.0.0.1:15006", "captured plaintext inbound"),
    ("--listen-readiness", "readiness", "0.0.0.0:15021", "GET /healthz/ready"),
    ("--listen-metrics", "metrics", "0.0.0.0:15020", "Prometheus /metrics and /stats/prometheus"),
    ("--listen-admin", "admin", "127.0.0.1:15000", "GET /config_dump"),
)

T = TypeVar("T")


def _option(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` that shows the parser's own message for a bad value (argparse
    prints only "invalid <name> value" for a plain ValueError)."""

    def typed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return typed


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("ztunnel", help="run the L4 node proxy (ztunnel role)")
    add_config_source_arguments(p)
    p.add_argument("--node", help="serve the pods of this node (default: every pod)")
    p.add_argument("--dev", action="store_true",
                   help="clients at an address that is no pod speak as --dev-identity instead of being refused")
    p.add_argument("--dev-identity", metavar="SPIFFE_ID",
                   help="identity for such clients (default spiffe://<td>/ns/default/sa/default)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--cluster-id", default="Kubernetes")
    p.add_argument("--root-namespace", default="istio-system", metavar="NS",
                   help="AuthorizationPolicies here without a selector apply mesh-wide (Istio's rootNamespace)")
    certs = p.add_mutually_exclusive_group()
    certs.add_argument("--ca-dir", help="dev CA folder (created if missing); mints every pod's certificate")
    certs.add_argument("--cert-dir", help="Istio mounted certificate files (one identity)")
    p.add_argument("--hbone-port", type=int, default=HBONE_PORT, help="HBONE port on every local pod IP")
    for option, _field, default, text in _LISTENERS:
        p.add_argument(option, default=default, metavar="HOST:PORT", help=f"{text} ('off' to disable)")
    p.add_argument("--keepalive-s", type=float, default=10.0, help="HBONE PING interval")
    p.add_argument("--ping-timeout-s", type=float, default=20.0, help="drop an HBONE connection without PONG")
    p.add_argument("--packet-mark", type=_option(parse_mark), default="auto", metavar="auto|off|MARK",
                   help="SO_MARK on our own sockets so istio-cni's capture rules skip them (1337 = 0x539); "
                        "auto: 1337 when allowed (CAP_NET_ADMIN), else off")
    p.add_argument("--original-source", type=_option(parse_original_source), default="auto", metavar="auto|on|off",
                   help="dial local apps from the client's IP (IP_TRANSPARENT, as ztunnel's ENABLE_ORIG_SRC); "
                        "auto: on when allowed (CAP_NET_ADMIN), else off")
    p.add_argument("--drain-s", type=float, default=5.0, help="grace for live connections on SIGTERM/SIGINT")
    p.set_defaults(func=main)


def settings_from(args: argparse.Namespace) -> ZtunnelSettings:
    packet_mark, why_off = choose_mark(args.packet_mark)
    original_source, why_not = choose_original_source(args.original_source)
    for note in (why_off, why_not):
        if note is not None:
            log.info("%s", note)
    if original_source and packet_mark is None:  # under istio-cni the app's replies would not come back
        log.warning("original source without a packet mark: istio-cni's connmark rules route the app's replies "
                    "back to us only for marked sockets (facts §1.7); expect dials to local apps to time out")
    listeners: dict[str, Address | None] = {}
    for option, name, default, _text in _LISTENERS:
        value = getattr(args, option[2:].replace("-", "_"))
        port = int(default.rsplit(":", 1)[1])
        listeners[name] = None if value in ("off", "none", "") else split_host_port(value, port)
    return ZtunnelSettings(
        node=args.node,
        trust_domain=args.trust_domain,
        cluster_domain=args.cluster_domain,
        cluster_id=args.cluster_id,
        dev=args.dev,
        dev_identity=Identity.parse(args.dev_identity) if args.dev_identity else None,
        hbone_port=args.hbone_port,
        keepalive_s=args.keepalive_s,
        ping_timeout_s=args.ping_timeout_s,
        packet_mark=packet_mark,
        original_source=original_source,
        root_namespace=args.root_namespace,
        **listeners,  # type: ignore[arg-type]
    )


def main(args: argparse.Namespace) -> int:
    return run(lambda stop: _serve(args, stop))


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Load the mesh, then run the role until ``stop``. The first load from an API server waits for
    it to answer; a SIGTERM meanwhile ends the wait (there is nothing to drain yet)."""
    loaded = asyncio.Event()
    loop = asyncio.get_running_loop()
    serving = loop.create_task(_serve_loaded(args, stop, loaded))
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not serving.done() and not loaded.is_set():
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        log.info("stopped before the mesh was loaded")
        return 0
    return await serving


async def _serve_loaded(args: argparse.Namespace, stop: asyncio.Event, loaded: asyncio.Event) -> int:
    settings = settings_from(args)
    certificates = certificate_provider(args.ca_dir, args.cert_dir, args.trust_domain)
    try:
        async with open_mesh_source(args) as (source, snapshot):
            loaded.set()
            return await _run_role(args, stop, settings, certificates, source, snapshot)
    except KubeConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2


async def _run_role(
    args: argparse.Namespace,
    stop: asyncio.Event,
    settings: ZtunnelSettings,
    certificates: CertificateProvider,
    source: FolderSource | KubeSource,
    snapshot: MeshSnapshot,
) -> int:
    role = ZtunnelRole(settings, snapshot, certificates)
    try:
        await role.start()
    except (PacketMarkError, OriginalSourceError) as exc:  # --packet-mark/--original-source asked for, refused
        log.error("cannot start: %s", exc)
        return 2
    watcher = asyncio.get_running_loop().create_task(source.watch(role.apply))
    cert_watcher = watch_certificate_files(certificates, role.refresh_certificates)
    await stop.wait()
    watcher.cancel()
    if cert_watcher is not None:
        cert_watcher.cancel()
    await role.stop(args.drain_s)
    log.info("ztunnel stopped")
    return 0
