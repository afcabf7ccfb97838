"""``waypoint ztunnel --kubernetes KUBECONFIG`` end to end, as a process against the HTTPS API server
stand-in: pods added and deleted through the API become (and stop being) served; and the shipped
RBAC grants exactly what the source reads."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml

from tests.mesh.objects import namespace, pod
from tests.support.kubeapi import FakeApiServer
from waypoint.mesh.kubeapi import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
POD_1, POD_2 = "127.0.141.10", "127.0.141.11"  # this suite's loopback block


def can_connect(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


async def until(cond: bool, addr: tuple[str, int], proc: asyncio.subprocess.Process, log: Path, what: str) -> None:
    """Wait (deadline 20 s) until ``addr`` accepts connections (``cond``) or refuses them (not ``cond``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await loop.run_in_executor(None, can_connect, addr) is not cond:
        assert proc.returncode is None, f"ztunnel exited: {log.read_text()[-3000:]}"
        assert loop.time() < deadline, f"{what} not met in 20s: {log.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_ztunnel_serves_pods_added_through_the_api_server(tmp_path: Path) -> None:
    from waypoint.testing.certs import dev_ca

    ca_dir = tmp_path / "ca"
    dev_ca().save(ca_dir)
    log = tmp_path / "ztunnel.log"
    async with FakeApiServer() as api:
        api.put(namespace("default", **{"istio.io/dataplane-mode": "ambient"}))
        api.put(pod("echo-1", POD_1, labels={"app": "echo"}))
        api.missing.add("/apis/security.istio.io/v1/authorizationpolicies")  # a CRD not installed
        cmd = [
            sys.executable, "-m", "waypoint", "ztunnel", "--kubernetes", str(api.kubeconfig(tmp_path / "kc")),
            "--dev", "--ca-dir", str(ca_dir), "--packet-mark", "off", "--original-source", "off",
            "--listen-outbound", "off", "--listen-socks5", "off", "--listen-inbound-plaintext", "off",
            "--listen-metrics", "off", "--listen-admin", "off", "--listen-readiness", "127.0.141.1:0",
        ]
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=err)
        try:
            await until(True, (POD_1, 15008), proc, log, "first load served")
            api.put(pod("echo-2", POD_2, labels={"app": "echo"}))
            await until(True, (POD_2, 15008), proc, log, "added pod served")
            api.delete("v1", "Pod", "default", "echo-1")
            await until(False, (POD_1, 15008), proc, log, "deleted pod no longer served")
            api.break_watches()  # the process keeps serving and reconnects
            api.put(pod("echo-1", POD_1, labels={"app": "echo"}))
            await until(True, (POD_1, 15008), proc, log, "pod added during a reconnect served")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text()
    assert "authorizationpolicies.security.istio.io not served" in text
    assert "Traceback" not in text


@pytest.mark.timeout(60)
async def test_sigterm_while_the_api_server_refuses_us_exits_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "ztunnel.log"
    async with FakeApiServer() as api:
        cmd = [sys.executable, "-m", "waypoint", "ztunnel", "--kubernetes",
               str(api.kubeconfig(tmp_path / "kc", token="wrong")), "--dev", "--ca-dir", str(tmp_path / "ca"),
               "--listen-outbound", "off", "--listen-socks5", "off", "--listen-inbound-plaintext", "off",
               "--listen-metrics", "off", "--listen-admin", "off", "--listen-readiness", "off"]
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=err)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while "401 Unauthorized" not in log.read_text():  # it is trying, and being refused
                assert proc.returncode is None and loop.time() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "stopped before the mesh was loaded" in log.read_text()


def test_cluster_role_grants_exactly_the_resources_read() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "waypoint-rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"]
        granted |= {(group, res) for group in rule["apiGroups"] for res in rule["resources"]}
    assert granted == {(r.group, r.plural) for r in RESOURCES}


def test_the_waypoint_deployment_reads_the_api_server_with_a_bound_service_account() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "waypoint-namespace.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    spec = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert "--kubernetes" in spec["containers"][0]["args"]
    assert not any(a.startswith("--config") for a in spec["containers"][0]["args"])
    binding = by_kind["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "waypoint-mesh-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                    "namespace": by_kind["Deployment"]["metadata"]["namespace"]}]


def test_ztunnel_takes_exactly_one_of_config_and_kubernetes() -> None:
    from waypoint.cli import build_parser

    parser = build_parser("ztunnel")
    assert parser.parse_args(["ztunnel", "--kubernetes"]).kubernetes == ""
    assert parser.parse_args(["ztunnel", "--kubernetes", "/k", "--dev"]).kubernetes == "/k"
    args = parser.parse_args(["ztunnel", "--config", "/d"])
    assert (args.config, args.kubernetes) == ("/d", None)
    for bad in (["ztunnel"], ["ztunnel", "--config", "/d", "--kubernetes"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def _admin_dump(addr: tuple[str, int]) -> dict[str, object] | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/config_dump", timeout=1) as r:
            dump: dict[str, object] = json.loads(r.read())
            return dump
    except OSError:
        return None


@pytest.mark.timeout(90)
async def test_waypoint_follows_policies_from_the_api_server(tmp_path: Path) -> None:
    """``waypoint waypoint --kubernetes``: its Gateway and an AuthorizationPolicy come from the API, and
    a policy added there is enforced without a restart (the admin dump's rbac turns on)."""
    from tests.mesh.objects import waypoint_gateway
    from waypoint.testing.certs import dev_ca

    ca_dir = tmp_path / "ca"
    dev_ca().save(ca_dir)
    log = tmp_path / "waypoint.log"
    admin = ("127.0.141.2", 15000)
    async with FakeApiServer() as api:
        api.put(namespace("shop", **{"istio.io/dataplane-mode": "ambient"}))
        api.put(waypoint_gateway("waypoint", "shop", address="127.0.141.3"))
        cmd = [
            sys.executable, "-m", "waypoint", "waypoint", "--kubernetes", str(api.kubeconfig(tmp_path / "kc")),
            "--gateway", "shop/waypoint", "--ca-dir", str(ca_dir), "--concurrency", "1", "--metrics", "off",
            "--readiness", "127.0.141.2:0", "--admin", f"{admin[0]}:{admin[1]}",
        ]
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=err)
        try:
            await until(True, ("127.0.141.3", 15008), proc, log, "waypoint serving on the Gateway's address")
            await until(True, admin, proc, log, "admin endpoint up")  # it listens after 15008
            dump = await asyncio.to_thread(_admin_dump, admin)
            assert dump is not None and dump["rbac"] == {"enforcing": False, "allowed": 0, "denied": 0}
            api.put({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "allow-nothing", "namespace": "shop"},
                     "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                              "name": "waypoint"}]}})
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                dump = await asyncio.to_thread(_admin_dump, admin)
                if dump is not None and dump["rbac"]["enforcing"]:  # type: ignore[index]
                    break
                assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "Traceback" not in log.read_text()
