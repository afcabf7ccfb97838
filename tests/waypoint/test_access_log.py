"""The waypoint's access log with real traffic: client → SOCKS5 → ztunnel → HBONE → waypoint → app.

Istio turns it on with meshConfig ``accessLogFile`` or the Telemetry API's ``accessLogging``
(facts §3.1); lines are Envoy's, in Istio's ``EnvoyTextLogFormat`` / ``EnvoyJSONLogFormatIstio``
(``IS:pilot/pkg/model/telemetry_logging.go``). Lines go to a file in the test's folder and are
read back with a deadline (the writer thread batches them).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.apps import tcp_echo

from . import manifests as m
from .apps import EchoApp, serve
from .clients import http_client, socks5_open
from .conftest import MeshFactory, RunningMesh

pytestmark = pytest.mark.timeout(60)

TCP_IP, TCP_VIP, TCP_PORT = m.ip("12.31"), m.ip("13.31"), 9000
EMPTY_VIP = m.ip("13.9")  # a service whose selector matches no pod: the router answers 503 UH
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}

# Istio's TEXT format, field by field (telemetry_logging.go EnvoyTextLogFormat)
TEXT_LINE = re.compile(
    r'^\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<code>\d+) (?P<flags>\S+) (?P<details>\S+) (?P<term>\S+) \"(?P<failure>[^\"]*)\" (?P<received>\d+) "
    r'(?P<sent>\d+) (?P<duration>\d+) (?P<service_time>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" (?P<cluster>\S+) (?P<upstream_local>\S+) '
    r"(?P<downstream_local>\S+) (?P<downstream_remote>\S+) (?P<sni>\S+) (?P<route>\S+)$"
)


def mesh_config(**fields: Any) -> m.Doc:
    """The ``istio`` ConfigMap (key ``mesh``) in the root namespace, where istiod reads MeshConfig."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump(fields)}}


def telemetry(name: str, spec: dict[str, Any], ns: str = "app") -> m.Doc:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def policy(name: str, spec: dict[str, Any]) -> m.Doc:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "app"}, "spec": spec}


def empty_service() -> m.Doc:
    return m.service("empty", EMPTY_VIP, [("http", m.HTTP_PORT, m.APP_PORT)], selector={"app": "nobody"})


async def read_lines(path: Path, count: int, deadline_s: float = 10.0) -> list[str]:
    """The first ``count`` lines of the log, waiting for them until the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > end:
            return lines
        await asyncio.sleep(0.02)


async def settle(mesh: RunningMesh) -> None:
    """Let queued lines reach the file (so a test can assert that nothing more was written)."""
    await asyncio.sleep(0.1)
    mesh.dev.log_sinks.flush()


def text_fields(line: str) -> dict[str, str]:
    match = TEXT_LINE.match(line)
    assert match is not None, line
    return match.groupdict()


async def test_routed_request_line_in_istio_text_format(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    mesh = await make_mesh(m.standard(mesh_config(accessLogFile=str(log))))
    async with mesh.client(m.CLIENT_IP) as client:
        response = await client.post(f"http://{m.V1_VIP}/hello?x=1", content=b"12345",
                                     headers={"x-request-id": "req-1", "user-agent": "probe/1"})
    assert response.status_code == 200
    (line,) = await read_lines(log, 1)
    got = text_fields(line)
    assert (got["method"], got["path"], got["protocol"]) == ("POST", "/hello?x=1", "HTTP/1.1")
    assert (got["code"], got["flags"], got["details"]) == ("200", "-", "via_upstream")
    assert got["received"] == "5" and int(got["sent"]) == len(response.content)
    assert int(got["duration"]) >= 0
    assert (got["request_id"], got["ua"], got["authority"]) == ("req-1", "probe/1", m.V1_VIP)
    assert got["upstream_host"] == f"{m.V1_IP}:{m.APP_PORT}"
    assert got["cluster"] == f"inbound-vip|{m.HTTP_PORT}|http|echo-v1.app.svc.cluster.local"
    assert got["downstream_local"] == f"{m.V1_VIP}:{m.HTTP_PORT}"
    assert got["downstream_remote"].startswith(f"{m.CLIENT_IP}:")
    assert got["route"] == "default" and got["term"] == "-" and got["failure"] == "-"


async def test_rbac_denial_logs_403_with_the_matched_policy(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    deny = policy("deny-admin", {"targetRefs": [GATEWAY_REF], "action": "DENY",
                                 "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]})
    mesh = await make_mesh(m.standard(deny, mesh_config(accessLogFile=str(log))))
    async with mesh.client(m.CLIENT_IP) as client:
        denied = await client.get(f"http://{m.V1_VIP}/admin")
    assert denied.status_code == 403
    (line,) = await read_lines(log, 1)
    got = text_fields(line)
    assert (got["code"], got["flags"]) == ("403", "-")  # Envoy's RBAC filter sets no flag
    # the policy as the RBAC filter names it (waypoint/l7/filters/rbac.py ``denial``)
    assert got["details"] == "rbac_access_denied_matched_policy[ns[app]-policy[deny-admin]-rule[0]]"
    assert int(got["sent"]) == len(b"RBAC: access denied") and got["upstream_host"] == "-"


async def test_no_healthy_upstream_logs_503_uh(make_mesh: MeshFactory, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    mesh = await make_mesh(m.standard(empty_service(), mesh_config(accessLogFile=str(log))))
    async with mesh.client(m.CLIENT_IP) as client:
        response = await client.get(f"http://{EMPTY_VIP}/")
    assert response.status_code == 503
    got = text_fields((await read_lines(log, 1))[0])
    assert (got["code"], got["flags"], got["details"]) == ("503", "UH", "no_healthy_upstream")
    assert got["upstream_host"] == "-" and got["cluster"] == "inbound-vip|80|http|empty.app.svc.cluster.local"


async def test_json_encoding_has_istios_keys(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    mesh = await make_mesh(m.standard(mesh_config(accessLogFile=str(log), accessLogEncoding="JSON")))
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/json", headers={"x-request-id": "j-1"})).status_code == 200
    record = json.loads((await read_lines(log, 1))[0])
    assert set(record) == {  # EnvoyJSONLogFormatIstio
        "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
        "response_code_details", "connection_termination_details", "bytes_received", "bytes_sent", "duration",
        "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
        "upstream_cluster", "upstream_local_address", "downstream_local_address", "downstream_remote_address",
        "requested_server_name", "upstream_transport_failure_reason",
    }
    assert record["response_code"] == 200 and record["bytes_received"] == 0  # typed, as Envoy's JSON
    assert (record["method"], record["path"], record["request_id"]) == ("GET", "/json", "j-1")
    assert record["response_flags"] == "-" and record["upstream_transport_failure_reason"] is None


async def test_telemetry_filter_logs_only_failures(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    """Telemetry ``targetRefs`` the waypoint, provider ``envoy`` (its path from the mesh config's own
    provider), ``filter.expression: response.code >= 400``."""
    log = tmp_path / "failures.log"
    config = mesh_config(extensionProviders=[{"name": "failures", "envoyFileAccessLog": {"path": str(log)}}])
    only_failures = telemetry("failures", {"targetRefs": [GATEWAY_REF], "accessLogging": [
        {"providers": [{"name": "failures"}], "filter": {"expression": "response.code >= 400"}}]})
    mesh = await make_mesh(m.standard(empty_service(), config, only_failures))
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/fine")).status_code == 200
        assert (await client.get(f"http://{EMPTY_VIP}/broken")).status_code == 503
    await read_lines(log, 1)
    await settle(mesh)  # and nothing else comes
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and text_fields(lines[0])["path"] == "/broken"


async def test_telemetry_disabled_turns_the_mesh_log_off(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    config = mesh_config(accessLogFile=str(log), extensionProviders=[
        {"name": "file", "envoyFileAccessLog": {"path": str(log)}}], defaultProviders={"accessLogging": ["file"]})
    off = telemetry("off", {"accessLogging": [{"providers": [{"name": "file"}], "disabled": True}]})
    mesh = await make_mesh(m.standard(config, off))
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/")).status_code == 200
    await settle(mesh)
    assert not log.exists() or log.read_text() == ""
    assert not mesh.waypoint("waypoint").access_log.enabled


async def test_bad_telemetry_is_rejected_naming_the_field(make_mesh: MeshFactory, tmp_path: Path) -> None:
    bad = telemetry("bad", {"accessLogging": [{"providers": [{"name": "envoy"}],
                                               "filter": {"expression": "xds.cluster_name == 'x'"}}]})
    mesh = await make_mesh(m.standard(bad, mesh_config(accessLogFile=str(tmp_path / "a.log"))))
    problems = [p for p in mesh.dev.source.snapshot.problems if "Telemetry" in str(p)]
    assert len(problems) == 1
    assert "spec.accessLogging[0].filter.expression" in str(problems[0])


async def test_access_log_off_when_access_log_file_is_empty(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    """``accessLogFile: ""`` turns the log off, even where the dev default would log."""
    log = tmp_path / "default.log"
    mesh = await make_mesh(m.standard(mesh_config(accessLogFile="")), access_log=str(log))
    wp = mesh.waypoint("waypoint")
    assert not wp.access_log.enabled and wp.access_log not in wp.chain.filters  # no cost in the chain
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/")).status_code == 200
    await settle(mesh)
    assert not log.exists()


async def test_turning_the_log_on_by_reload(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    mesh = await make_mesh(m.standard(), access_log=None)
    assert not mesh.waypoint("waypoint").access_log.enabled
    mesh.write(m.standard(mesh_config(accessLogFile=str(log))))
    await mesh.reload()
    async with mesh.client(m.CLIENT_IP) as client:  # a new connection gets the new chain
        assert (await client.get(f"http://{m.V1_VIP}/after")).status_code == 200
    (line,) = await read_lines(log, 1)
    assert text_fields(line)["path"] == "/after"


async def test_opaque_tcp_tunnel_gets_one_line_at_close(make_mesh: MeshFactory, tmp_path: Path) -> None:
    """Envoy's tcp_proxy access log: one line when the tunnel closes, its bytes each way, no HTTP fields."""
    log = tmp_path / "access.log"
    mesh = await make_mesh(m.standard(
        m.pod("tcp", TCP_IP, ports=(TCP_PORT,)),
        m.service("tcp", TCP_VIP, [("tcp-echo", TCP_PORT, TCP_PORT)]),
        mesh_config(accessLogFile=str(log)),
    ))
    server = await serve(tcp_echo, TCP_IP, TCP_PORT)
    try:
        reader, writer = await socks5_open(mesh.socks, TCP_VIP, TCP_PORT, m.CLIENT_IP)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        (line,) = await read_lines(log, 1)
    finally:
        server.close()
    got = text_fields(line)
    assert (got["method"], got["path"], got["protocol"], got["code"], got["flags"]) == ("-", "-", "-", "0", "-")
    assert (got["received"], got["sent"]) == ("4", "4")
    assert got["upstream_host"] == f"{TCP_IP}:{TCP_PORT}"
    assert got["cluster"] == f"inbound-vip|{TCP_PORT}|tcp|tcp.app.svc.cluster.local"


async def test_waypoint_dev_logs_each_request_to_stdout(tmp_path: Path) -> None:
    """``waypoint dev --config DIR`` (a subprocess): a request through its waypoint shows its line."""
    folder = m.write(tmp_path / "mesh", m.standard())
    listen = f"{m.ip('11.2')}:0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waypoint", "dev", "--config", str(folder), "--listen-socks5", f"{m.ip('11.2')}:15080",
        *[arg for opt in ("--listen-outbound", "--listen-inbound-plaintext") for arg in (opt, "off")],
        *[arg for opt in ("--listen-readiness", "--listen-metrics", "--listen-admin") for arg in (opt, listen)],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    app = await EchoApp("echo-v1", m.V1_IP, m.APP_PORT).start()
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"mesh ready" in banner
        async with http_client((m.ip("11.2"), 15080), m.CLIENT_IP) as client:
            assert (await client.get(f"http://{m.V1_VIP}/from-dev")).status_code == 200
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
            if line.startswith("["):
                break
        got = text_fields(line.rstrip("\n"))
        assert (got["method"], got["path"], got["code"]) == ("GET", "/from-dev", "200")
    finally:
        await app.stop()
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
