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
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
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


def pod(ns: str, name: str, ip: str, sa: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"serviceAccountName": sa, "nodeName": "bench"},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def service(ns: str, name: str, vip: str, port: int, selector: dict[str, str], app_protocol: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": vip,
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port, "appProtocol": app_protocol}],
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

    canary = [{"path": {"type": "PathPrefix", "value": "/"},
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
    workdir: Path, waypoint_ip: str, cert_dir: Path, destination: tuple[str, int], protocol: str = "http"
) -> subprocess.Popen[bytes]:
    """Our waypoint for the L7 bench: the destination app is a one-pod Service whose VIP is the pod
    address itself, so the ``:authority`` the source sends (the app's ip:port, as to Envoy's chain)
    is service-addressed and routed, and re-origination goes to ``<that ip>:15008``."""
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
         "--admin", f"{waypoint_ip}:15000"],
    )
    try:
        _wait_ready(f"http://{ready}/healthz/ready", proc)
    except BaseException:
        stop(proc)
        raise
    return proc
