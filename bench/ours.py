"""Starting our own processes for the benches: the waypoint role (L7) and the ztunnel role (L4).

Each is started the way a user would, through the ``waypoint`` console script, from a config
folder written here that describes exactly the bench's topology.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

WAYPOINT_BIN = Path(sys.executable).with_name("waypoint")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def namespace(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}},
    }


def pod(ns: str, name: str, ip: str, sa: str, labels: dict[str, str], node: str = "bench") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"serviceAccountName": sa, "nodeName": node},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def service(
    ns: str, name: str, vip: str, port: int, selector: dict[str, str], app_protocol: str | None
) -> dict[str, object]:
    """``app_protocol`` None: an undeclared port (a name Istio reads no protocol from)."""
    spec_port: dict[str, object] = {"name": "main", "port": port, "targetPort": port}
    if app_protocol is not None:
        spec_port.update(name="http", appProtocol=app_protocol)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": vip,
            "selector": selector,
            "ports": [spec_port],
        },
    }


def waypoint_gateway(ns: str, name: str, address: str) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": {"istio.io/waypoint-for": "all"}},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "addresses": [{"type": "IPAddress", "value": address}],
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def bench_routes(ns: str, svc: str, port: int) -> dict[str, object]:
    """The same L7 work as the Envoy waypoint chain: canary and default routes, one request header
    per route, one response header (``tests/support/envoy/waypoint_chain.py``)."""

    def rule(route: str, matches: list[dict[str, object]]) -> dict[str, object]:
        return {
            "matches": matches,
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [
                    {"name": "x-waypoint-route", "value": route}]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [
                    {"name": "x-waypoint", "value": "waypoint"}]}},
            ],
            "backendRefs": [{"name": svc, "port": port}],
        }

    canary: list[dict[str, object]] = [{"path": {"type": "PathPrefix", "value": "/"},
               "headers": [{"name": "x-canary", "value": "true"}]}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": svc, "port": port}],
            "rules": [rule("canary", canary), rule("default", [{"path": {"type": "PathPrefix", "value": "/"}}])],
        },
    }


def write_config(directory: Path, docs: list[dict[str, object]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


def start_waypoint(
    workdir: Path, waypoint_ip: str, cert_dir: Path, destination: tuple[str, int], protocol: str | None = None
) -> subprocess.Popen[bytes]:
    """Our waypoint for the L7 bench: the destination app is a one-pod Service whose VIP is the pod
    address itself, so the ``:authority`` the source sends (the app's ip:port, as to Envoy's chain)
    is service-addressed and routed, and re-origination goes to ``<that ip>:15008``. The port is
    undeclared by default, so upstream follows the downstream protocol, as the Envoy chain does
    (``use_downstream_protocol_config``) and as Istio does for undeclared ports."""
    ip, port = destination
    config = write_config(workdir / "ours-config", [
        namespace("bench"),
        waypoint_gateway("bench", "waypoint", waypoint_ip),
        service("bench", "backend", ip, port, {"app": "backend"}, protocol),
        pod("bench", "backend-0", ip, "backend", {"app": "backend"}),
        bench_routes("bench", "backend", port),
    ])
    ready = f"{waypoint_ip}:15021"
    proc = subprocess.Popen(
        [str(WAYPOINT_BIN), "--log-level", "warning", "waypoint", "--config", str(config),
         "--gateway", "bench/waypoint", "--cert-dir", str(cert_dir), "--readiness", ready,
         "--admin", f"{waypoint_ip}:15000", "--concurrency", "1"],
    )
    try:
        _wait_ready(f"http://{ready}/healthz/ready", proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_ztunnel(
    workdir: Path, name: str, config: Path, node: str, cert_dir: Path, readiness: str, socks5: str | None = None
) -> subprocess.Popen[bytes]:
    """One of our ztunnels for the L4 bench, serving the pods of ``node`` of ``config`` with the
    one identity in ``cert_dir`` (Istio's file layout). Only HBONE on each local pod's 15008,
    readiness and, when given, SOCKS5 are opened: the bench needs nothing else."""
    off = "off"
    proc = subprocess.Popen(
        [str(WAYPOINT_BIN), "--log-level", "warning", "ztunnel", "--config", str(config), "--node", node,
         "--cert-dir", str(cert_dir), "--listen-socks5", socks5 or off, "--listen-outbound", off,
         "--listen-inbound-plaintext", off, "--listen-metrics", off, "--listen-admin", off,
         "--listen-readiness", readiness],
        stdout=(workdir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(f"http://{readiness}/healthz/ready", proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def ztunnel_pair_config(
    workdir: Path, client_pod_ip: str, server_pod_ip: str
) -> Path:
    """The L4 bench's mesh: two ambient pods on two nodes, ``client`` (the load generator binds to
    its IP) and ``server`` (the target app listens on its IP); no Service, so the source ztunnel
    tunnels straight to ``<server pod IP>:15008`` with ``:authority`` ``<server pod IP>:<port>``."""
    return write_config(workdir / "ours-l4-config", [
        namespace("bench"),
        pod("bench", "client", client_pod_ip, "client", {"app": "client"}, node="client"),
        pod("bench", "server", server_pod_ip, "server", {"app": "server"}, node="server"),
    ])
