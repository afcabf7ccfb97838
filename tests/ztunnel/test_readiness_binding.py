"""Readiness reflects the local pods' HBONE listeners.

As ztunnel: ``/healthz/ready`` turns 200 only when nothing is pending and names what is
(``ZT:src/readiness/mod.rs``, ``ZT:src/readiness/server.rs`` ``handle_ready``); a pod whose proxy
cannot start stays pending and is retried until it starts or the pod is deleted
(``ZT:src/inpod/statemanager.rs`` ``ready``/``retry_pending``/``del_workload``).
The pods live on 127.0.60.x; a plain listening socket on ``<pod IP>:15008`` makes the bind fail.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.wait import wait_for
from waypoint.identity.certs import DevCertificateProvider
from waypoint.mesh.folder import FolderSource
from waypoint.roles.pod_listeners import bind_retry_delay
from waypoint.roles.ztunnel import ZtunnelRole
from waypoint.testing.certs import dev_ca

from .conftest import settings
from .mesh import NAMESPACE, SERVER_PORT, pod, socks5_connect
from .test_e2e import App, exchange, scrape

HOST = "127.0.60.1"  # the role's own listeners
CLIENT_IP = "127.0.60.10"
POD_IP = "127.0.60.5"
RETRY_TASK = "ztunnel-bind-retry"
FAST = {"bind_retry_s": 0.02, "bind_retry_max_s": 0.1}


def write_pods(folder: Path, with_echo: bool = True) -> None:
    docs = [NAMESPACE, pod("sleep-1", CLIENT_IP, "node-a", "sleep", "sleep")]
    if with_echo:
        docs.append(pod("echo-1", POD_IP, "node-a", "echo", "echo", (SERVER_PORT,)))
    (folder / "mesh.yaml").write_text("\n---\n".join(docs))


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:  # overrides the conftest mesh: our pods, on 127.0.60.x
    folder = tmp_path / "mesh"
    folder.mkdir()
    write_pods(folder)
    return folder


@contextmanager
def occupied(ip: str, port: int = 15008) -> Iterator[socket.socket]:
    """Someone else listens on ``ip:port`` (no SO_REUSEADDR): our bind there fails with EADDRINUSE."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((ip, port))
        sock.listen()
        yield sock
    finally:
        sock.close()


async def readiness(role: ZtunnelRole) -> tuple[int, str]:
    host, port = role.addresses["readiness"]
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/healthz/ready")
    return response.status_code, response.text


async def wait_readiness(role: ZtunnelRole, status: int, timeout: float = 10.0) -> str:
    """Poll ``/healthz/ready`` until it answers ``status``; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got, body = await readiness(role)
        if got == status:
            return body
        assert loop.time() < deadline, f"readiness still {got} {body!r} after {timeout}s"
        await asyncio.sleep(0.02)


def retry_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == RETRY_TASK and not t.done()]


def test_bind_retry_backoff_doubles_then_caps() -> None:
    assert [bind_retry_delay(n, 0.5, 10.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert bind_retry_delay(10_000, 0.5, 10.0) == 10.0  # no overflow however long it fails


async def test_failed_bind_is_503_naming_the_pod_then_retried_and_tunnel_works(make_role: Any) -> None:
    with occupied(POD_IP):
        role = await make_role("node-a", HOST, **FAST)
        assert await readiness(role) == (503, f"not ready, pending: hbone {POD_IP}:15008\n")
        assert not role.ready
        dump = role.config_dump()["local_pods"]
        assert dump[POD_IP]["hbone"] is False and "hbone_error" in dump[POD_IP]
        assert dump[CLIENT_IP] == {"pod": "default/sleep-1", "identity": "spiffe://cluster.local/ns/default/sa/sleep",
                                   "hbone": True}
    assert await wait_readiness(role, 200) == "ready\n"
    assert role.ready and set(role.hbone_listeners) == {CLIENT_IP, POD_IP}
    assert not retry_tasks()
    async with App(4, POD_IP) as app:  # client pod -> SOCKS5 -> HBONE on the now bound POD_IP:15008 -> app
        rep, reader, writer = await socks5_connect(role.addresses["socks5"], POD_IP, SERVER_PORT, CLIENT_IP)
        assert rep == 0
        _, n, _ = await asyncio.wait_for(exchange(reader, writer, 4), 10)
        writer.close()
        await wait_for(lambda: bool(app.received) and not role.conns.live)
    assert n == 4 and app.received[0][0] == 4 and app.peers == [CLIENT_IP]
    opened = (await scrape(role))["istio_tcp_connections_opened_total"]
    assert sorted(lbl["reporter"] for lbl, _ in opened) == ["destination", "source"]  # both ends of the tunnel


async def test_pod_removed_while_bind_failing_stops_retries_and_turns_ready(
    make_role: Any, mesh_dir: Path
) -> None:
    with occupied(POD_IP):
        role = await make_role("node-a", HOST, **FAST)
        await wait_for(lambda: POD_IP in role.failed_binds and role.failed_binds[POD_IP].failures >= 3,
                       what="retries")
        assert retry_tasks()
        write_pods(mesh_dir, with_echo=False)
        await role.apply(FolderSource(mesh_dir).reload())
        assert await readiness(role) == (200, "ready\n")
        await wait_for(lambda: not retry_tasks(), what="retry task gone")
        assert role.failed_binds == {} and set(role.hbone_listeners) == {CLIENT_IP}


async def test_failures_log_once_per_backoff_step(make_role: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="waypoint.roles.pod_listeners")
    with occupied(POD_IP):
        role = await make_role("node-a", HOST, bind_retry_s=0.01, bind_retry_max_s=0.04)
        await wait_for(lambda: role.failed_binds[POD_IP].failures >= 8, what="8 failed binds")
        failures = role.failed_binds[POD_IP].failures
        errors = [r for r in caplog.records if "cannot serve HBONE" in r.getMessage()]
        assert f"hbone {POD_IP}:15008" in (await readiness(role))[1]
    # steps 0.01, 0.02, 0.04 s: one ERROR each; the rest at the cap are DEBUG
    assert [r.levelno for r in errors if r.levelno == logging.ERROR] == [logging.ERROR] * 3
    assert len(errors) >= failures >= 8


async def test_apply_retries_at_once_and_stop_leaves_no_retry_behind(mesh_dir: Path) -> None:
    snapshot = FolderSource(mesh_dir).reload()
    role = ZtunnelRole(settings("node-a", HOST, bind_retry_s=60.0, bind_retry_max_s=60.0), snapshot,
                       DevCertificateProvider(dev_ca()))
    try:
        with occupied(POD_IP):
            await role.start()
            assert (await readiness(role))[0] == 503 and retry_tasks()
        await role.apply(FolderSource(mesh_dir).reload())  # the next timed retry is a minute away
        assert await readiness(role) == (200, "ready\n") and POD_IP in role.hbone_listeners
        with occupied("127.0.60.6"):
            (mesh_dir / "extra.yaml").write_text(pod("echo-2", "127.0.60.6", "node-a", "echo", "echo"))
            await role.apply(FolderSource(mesh_dir).reload())
            assert (await readiness(role))[1] == "not ready, pending: hbone 127.0.60.6:15008\n"
            assert retry_tasks()
    finally:
        await role.stop(grace_s=1.0)
    assert not retry_tasks() and not role.ready and role.pending() == ["start"]
