"""``waypoint dev``: the whole mesh on localhost, for a folder of manifests or the shipped example.

    waypoint dev                      # the example: an HTTP echo and a TCP echo, started here
    waypoint dev --config DIR         # your manifests; pods with a 127/8 podIP are yours to run

Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from waypoint.devmesh.apps import start_example_apps
from waypoint.devmesh.mesh import EXAMPLE_DIR, DevMesh, DevSettings, run_until
from waypoint.roles.runtime import run, split_host_port

log = logging.getLogger(__name__)

_LISTENERS = (
    ("--listen-socks5", "socks5", "127.0.0.1:15080"),
    ("--listen-outbound", "outbound", "127.0.0.1:15001"),
    ("--listen-inbound-plaintext", "inbound_plaintext", "127.0.0.1:15006"),
    ("--listen-readiness", "readiness", "127.0.0.1:15021"),
    ("--listen-metrics", "metrics", "127.0.0.1:15020"),
    ("--listen-admin", "admin", "127.0.0.1:15000"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("dev", help="run the dev mesh on localhost (ztunnel + waypoints + dev CA)")
    p.add_argument("--config", metavar="DIR", help="folder of Kubernetes YAML (default: the shipped example)")
    p.add_argument("--ca-dir", metavar="DIR", help="keep the dev CA here (created if missing)")
    p.add_argument("--example-apps", action="store_true",
                   help="with --config: also start the example's apps for the folder's pods labelled app=echo "
                        "(HTTP echo) and app=tcp-echo (TCP echo), e.g. in a copy of the example with a policy added")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-namespace", default="istio-system", metavar="NS",
                   help="AuthorizationPolicies here without a selector apply mesh-wide (Istio's rootNamespace)")
    for option, _field, default in _LISTENERS:
        p.add_argument(option, default=default, metavar="HOST:PORT", help="'off' to disable")
    p.set_defaults(func=main)


def settings_from(args: argparse.Namespace) -> DevSettings:
    listeners = {}
    for option, name, default in _LISTENERS:
        value = getattr(args, option[2:].replace("-", "_"))
        listeners[name] = None if value == "off" else split_host_port(value, int(default.rsplit(":", 1)[1]))
    return DevSettings(
        config=Path(args.config) if args.config else EXAMPLE_DIR,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        ca_dir=Path(args.ca_dir) if args.ca_dir else None,
        **listeners,  # type: ignore[arg-type]
    )


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not settings.config.is_dir():
        print(f"waypoint dev: {settings.config} is not a folder", file=sys.stderr)
        return 2
    return run(lambda stop: _serve(settings, example=args.config is None or args.example_apps, stop=stop))


async def _serve(settings: DevSettings, *, example: bool, stop: asyncio.Event) -> int:
    mesh = DevMesh(settings)
    apps: list[asyncio.Server] = []
    try:
        await mesh.start()
    except OSError as exc:
        print(f"waypoint dev: cannot listen: {exc} (is another `waypoint dev` running?)", file=sys.stderr)
        await mesh.stop(0.1)
        return 1
    if example:
        apps = await start_example_apps(_example_pods(mesh))
    print(_banner(mesh, settings, example), flush=True)
    await run_until(mesh, stop)
    for server in apps:
        server.close()
    await mesh.stop()
    print("waypoint dev: stopped", flush=True)
    return 0


def _example_pods(mesh: DevMesh) -> dict[str, tuple[str, str, str]]:
    pods = {}
    for workload in mesh.ztunnel.local_pods.values():
        app = workload.labels.get("app")
        if app:
            pods[app] = (workload.name, workload.namespace, workload.ips[0])
    return pods


def _banner(mesh: DevMesh, settings: DevSettings, example: bool) -> str:
    counts = mesh.summary()
    socks = f"{settings.socks5[0]}:{settings.socks5[1]}" if settings.socks5 else "(off)"
    lines = [
        f"waypoint dev: mesh ready from {settings.config}: {counts['pods']} pods, {counts['services']} services, "
        f"{counts['waypoints']} waypoints, {counts['rejected']} rejected objects",
        f"  every hop between pods is HBONE (HTTP/2 CONNECT in mutual TLS 1.3) with SPIFFE identities "
        f"from a dev CA (trust domain {settings.trust_domain})",
    ]
    if example:
        lines += [
            "  try:",
            f"    curl --socks5-hostname {socks} http://echo.default.svc.cluster.local:8080/",
            f"    curl --interface 127.10.0.3 --socks5-hostname {socks} http://echo.default:8080/   # as pod sleep",
            f"    printf 'hello\\n' | ncat --proxy {socks} --proxy-type socks5 127.0.200.2 9000",
            "  the log shows each connection with the identities on both ends",
        ]
    for name in ("readiness", "metrics", "admin"):
        addr = getattr(settings, name)
        if addr:
            path = {"readiness": "/healthz/ready", "metrics": "/metrics", "admin": "/config_dump"}[name]
            lines.append(f"  {name}: http://{addr[0]}:{addr[1]}{path}")
    lines.append("  Ctrl-C stops everything")
    return "\n".join(lines)
