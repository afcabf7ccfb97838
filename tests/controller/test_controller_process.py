"""``python -m waypoint controller --kubernetes KC`` as a process against the API server stand-in: a
Gateway put into the API becomes a Deployment, Service and ServiceAccount, and a programmed status."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from tests.controller.objects import gateway
from tests.support.kubeapi import FakeApiServer
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await client.get(url, timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(90)
async def test_controller_process_deploys_a_waypoint_for_a_gateway(tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    port = free_port()
    async with FakeApiServer() as api:
        cmd = [sys.executable, "-m", "waypoint", "controller", "--kubernetes", str(api.kubeconfig(tmp_path / "kc")),
               "--image", "registry.example/waypoint:9", "--readiness", f"127.0.0.1:{port}"]
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=err)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not await ready(f"http://127.0.0.1:{port}/healthz/ready"):  # ready once every kind is listed
                assert proc.returncode is None, log.read_text()[-3000:]
                assert loop.time() < deadline, f"not ready in 30s: {log.read_text()[-3000:]}"
                await asyncio.sleep(0.05)
            api.put(gateway())
            await wait_for(lambda: api.get("apps/v1", "Deployment", "shop", "waypoint") is not None, 20,
                           "Deployment applied")
            dep = api.get("apps/v1", "Deployment", "shop", "waypoint")
            assert dep is not None
            assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/waypoint:9"
            assert api.get("v1", "ServiceAccount", "shop", "waypoint") is not None
            await wait_for(lambda: api.get("v1", "Service", "shop", "waypoint") is not None, 20, "Service applied")
            api.assign_cluster_ip("shop", "waypoint", "10.96.3.3")

            def programmed() -> bool:
                gw = api.get("gateway.networking.k8s.io/v1", "Gateway", "shop", "waypoint") or {}
                return any(c["type"] == "Programmed" and c["status"] == "True"
                           for c in (gw.get("status") or {}).get("conditions") or ())

            await wait_for(programmed, 20, "Programmed=True")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    assert "gateway shop/waypoint reconciled" in text
