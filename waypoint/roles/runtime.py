"""Running a role as a process: uvloop, SIGTERM/SIGINT to stop cleanly, config watching."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from waypoint.hbone.allocator import tune_allocator
from waypoint.identity.ca import DevCA
from waypoint.identity.certs import CertificateProvider, DevCertificateProvider, FileCertificateSource
from waypoint.l7.routing.parse import validate_grpcroute, validate_httproute, validate_reference_grant
from waypoint.mesh.folder import FolderSource
from waypoint.mesh.kube import KindRegistry, default_registry
from waypoint.mesh.model import MeshSnapshot
from waypoint.policy.authz import validate_authorization_policy
from waypoint.policy.authz.peer_authn import validate_peer_authentication
from waypoint.policy.meshconfig import validate_mesh_configmap
from waypoint.policy.request_authn import validate_request_authentication
from waypoint.policy.telemetry import validate_telemetry

if TYPE_CHECKING:
    from waypoint.mesh.kubeapi import KubeSource

log = logging.getLogger(__name__)


def run(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop_event)`` on uvloop; SIGTERM and SIGINT set the event (a second one kills)."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        return await main(stop)

    tune_allocator()  # bulk HBONE buffers: stop glibc's per-turn heap trim (waypoint/hbone/allocator.py)
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(runner())
    return 130


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("second %s: exiting now", sig.name)
        raise SystemExit(1)
    log.info("%s: shutting down", sig.name)
    stop.set()


def config_registry() -> KindRegistry:
    """The kinds every role loads, L7 ones included (a bad route is rejected at load, naming its field)."""
    registry = default_registry()
    registry.register_kind("HTTPRoute", validate_httproute)
    registry.register_kind("GRPCRoute", validate_grpcroute)
    registry.register_kind("ReferenceGrant", validate_reference_grant)
    registry.register_kind("AuthorizationPolicy", validate_authorization_policy)
    registry.register_kind("PeerAuthentication", validate_peer_authentication)  # converted for ztunnel (peer_authn_l4)
    registry.register_kind("ConfigMap", validate_mesh_configmap)  # the ``istio`` mesh config (extensionProviders)
    registry.register_kind("Telemetry", validate_telemetry)  # accessLogging (waypoint/policy/telemetry.py)
    registry.register_kind("RequestAuthentication", validate_request_authentication)  # JWT (policy/request_authn.py)
    return registry


def folder_source(path: str) -> FolderSource:
    return FolderSource(Path(path), registry=config_registry())


def add_config_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The mesh source words every role shares: ``--config DIR`` or ``--kubernetes [KUBECONFIG]``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="DIR", help="folder of Kubernetes YAML, watched for changes")
    group.add_argument("--kubernetes", nargs="?", const="", metavar="KUBECONFIG",
                       help="list and watch the API server: in-cluster service account, or this kubeconfig")


@contextlib.asynccontextmanager
async def open_mesh_source(args: argparse.Namespace) -> AsyncIterator[tuple[FolderSource | KubeSource, MeshSnapshot]]:
    """The source ``args`` ask for (``--config`` or ``--kubernetes``) and its first snapshot; both have
    ``watch(on_change)``. The API server source is closed on exit. Raises ``KubeConfigError`` when
    there is no usable cluster config."""
    if getattr(args, "kubernetes", None) is None:
        folder = folder_source(args.config)
        yield folder, folder.reload()
        return
    from waypoint.mesh.kubeapi import KubeSource, from_kubeconfig, in_cluster  # httpx only when used

    config = from_kubeconfig(args.kubernetes) if args.kubernetes else in_cluster()
    kube = KubeSource(config, registry=config_registry())
    try:
        snapshot = await kube.reload()
        yield kube, snapshot
    finally:
        await kube.aclose()


def certificate_provider(ca_dir: str | None, cert_dir: str | None, trust_domain: str) -> CertificateProvider:
    """Certificates from Istio's mounted files (``--cert-dir``) or minted by a dev CA (``--ca-dir``)."""
    if cert_dir:
        return FileCertificateSource(Path(cert_dir))
    if ca_dir and DevCA.exists(Path(ca_dir)):
        return DevCertificateProvider(DevCA.load(Path(ca_dir)))
    ca = DevCA.create(trust_domain)
    if ca_dir:
        ca.save(Path(ca_dir))
        log.info("created a dev CA in %s", ca_dir)
    return DevCertificateProvider(ca)


def watch_certificate_files(provider: CertificateProvider, on_change: Callable[[], None]) -> asyncio.Task[None] | None:
    """For ``--cert-dir``: poll Istio's mounted files and call ``on_change`` when a new, complete set
    is on disk (the source ignores half-written sets). None for providers that mint themselves."""
    if not isinstance(provider, FileCertificateSource):
        return None

    def changed(cert: object) -> None:
        log.info("certificate files changed: new connections use the new certificate")
        on_change()

    return asyncio.get_running_loop().create_task(provider.watch(1.0, changed))


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)
