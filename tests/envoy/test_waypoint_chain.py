"""The Envoy waypoint chain carries HTTP/1.1 end to end and does its L7 work on the way.

client → Envoy originate (source ztunnel) → Envoy waypoint → Envoy terminate (destination ztunnel)
→ HTTP backend, each hop HBONE with its own identity (facts §2.4). The waypoint routes on a
header, adds a request header per route, a response header, and an ``x-request-id``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.envoy.conftest import Issue
from tests.support.envoy import (
    CANARY_HEADER,
    RESPONSE_HEADER,
    ROUTE_HEADER,
    EnvoyProcess,
    hbone_originate,
    hbone_terminate,
    http_backend,
    waypoint_chain,
)
from tests.support.envoy.backends import start_http_echo

CLIENT_IP, WAYPOINT_IP, BACKEND_IP = "127.0.7.11", "127.0.7.12", "127.0.7.13"
WAYPOINT_ID = "spiffe://cluster.local/ns/default/sa/waypoint"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
async def backend_port() -> AsyncIterator[int]:
    server = await start_http_echo(BACKEND_IP)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_waypoint_chain_routes_http1_over_hbone(
    backend_port: int, issue: Issue, tmp_path: Path
) -> None:
    destination = hbone_terminate((BACKEND_IP, 15008), issue("default", "backend"), "authority")
    waypoint = waypoint_chain((WAYPOINT_IP, 15008), issue("default", "waypoint"))
    # Via a waypoint, :authority is what the app dialled; TCP goes to the waypoint (facts §1.4).
    source = hbone_originate(
        (CLIENT_IP, 0),
        (WAYPOINT_IP, 15008),
        f"{BACKEND_IP}:{backend_port}",
        issue("default", "client"),
        WAYPOINT_ID,
    )
    with (
        EnvoyProcess(destination, tmp_path, "destination") as dest,
        EnvoyProcess(waypoint, tmp_path, "waypoint") as wp,
        EnvoyProcess(source, tmp_path, "source") as src,
    ):
        ip, port = src.listener_address("originate")
        async with httpx.AsyncClient(base_url=f"http://{ip}:{port}", timeout=10) as client:
            canary = await client.get("/v1/items?x=1", headers={CANARY_HEADER: "true"})
            default = await client.post("/v1/items", content=b"a" * 5000)

        assert canary.status_code == 200 and default.status_code == 200
        assert canary.headers[RESPONSE_HEADER] == "envoy"
        seen, seen2 = canary.json(), default.json()
        assert (seen["method"], seen["path"]) == ("GET", "/v1/items?x=1")
        assert seen["headers"][ROUTE_HEADER] == "canary"
        assert seen2["headers"][ROUTE_HEADER] == "default"
        assert seen2["body_length"] == 5000
        assert UUID.match(seen["headers"]["x-request-id"])
        assert seen["headers"]["x-request-id"] != seen2["headers"]["x-request-id"]
        # One keep-alive connection in: one CONNECT at each HBONE hop.
        assert wp.stat("cluster.hbone_upstream.upstream_cx_total") == 1
        assert wp.stat("http.main_internal.downstream_rq_completed") == 2
        dest.wait_stat("http.connect_terminate.downstream_rq_total", lambda n: n == 1)


async def test_waypoint_chain_carries_h2c_to_an_envoy_backend(issue: Issue, tmp_path: Path) -> None:
    # codec AUTO at main_internal and use_downstream_protocol toward the app: inner h2c stays h2c.
    with EnvoyProcess(http_backend(("127.0.7.16", 0)), tmp_path, "backend") as app:
        backend = app.listener_address("backend")
        destination = hbone_terminate(("127.0.7.16", 15008), issue("default", "backend"), "authority")
        waypoint = waypoint_chain(("127.0.7.15", 15008), issue("default", "waypoint"))
        source = hbone_originate(
            ("127.0.7.14", 0),
            ("127.0.7.15", 15008),
            f"{backend[0]}:{backend[1]}",
            issue("ns", "c"),
            WAYPOINT_ID,
        )
        with (
            EnvoyProcess(destination, tmp_path, "destination"),
            EnvoyProcess(waypoint, tmp_path, "waypoint"),
            EnvoyProcess(source, tmp_path, "source") as src,
        ):
            ip, port = src.listener_address("originate")
            async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
                responses = [await client.get(f"http://{ip}:{port}/{i}") for i in range(3)]
            assert [(r.http_version, r.status_code, r.text) for r in responses] == [
                ("HTTP/2", 200, "hello, world\n")
            ] * 3
            assert all(r.headers[RESPONSE_HEADER] == "envoy" for r in responses)
            app.wait_stat("http.backend.downstream_cx_http2_total", lambda n: n == 1)


async def test_waypoint_chain_pools_hbone_per_destination_not_per_client(
    backend_port: int, issue: Issue, tmp_path: Path
) -> None:
    # istiod shares the CONNECT's destination ONCE with the next hop (IS:pilot/pkg/xds/filters/
    # filters.go ConnectAuthorityFilter, ConnectAuthorityNetworkFilter): Envoy hashes values shared
    # with upstream into its pool keys, so two clients on two HBONE connections must still reach
    # one destination over one HBONE connection, as Istio's waypoint does (and as the benchmark's
    # baseline must, or it pays a TLS connection per client).
    destination = hbone_terminate((BACKEND_IP, 15008), issue("default", "backend"), "authority")
    waypoint = waypoint_chain(("127.0.7.19", 15008), issue("default", "waypoint"))
    authority = f"{BACKEND_IP}:{backend_port}"

    def source(ip: str, sa: str) -> EnvoyProcess:
        config = hbone_originate((ip, 0), ("127.0.7.19", 15008), authority, issue("default", sa), WAYPOINT_ID)
        return EnvoyProcess(config, tmp_path, sa)

    with (
        EnvoyProcess(destination, tmp_path, "destination") as dest,
        EnvoyProcess(waypoint, tmp_path, "waypoint") as wp,
        source("127.0.7.17", "client-a") as src_a,
        source("127.0.7.18", "client-b") as src_b,
    ):
        urls = ["http://{}:{}/".format(*src.listener_address("originate")) for src in (src_a, src_b)]
        async with httpx.AsyncClient(timeout=10) as first:
            assert (await first.get(urls[0])).status_code == 200
        # The ORIGINAL_DST host is created on the worker and added to the cluster on Envoy's main
        # thread; wait for it, so the next connections look it up instead of racing (bench/l7.py).
        wp.wait_stat("cluster.hbone_upstream.membership_total", lambda n: n == 1)
        for url in urls:
            async with httpx.AsyncClient(timeout=10) as client:
                assert [(await client.get(url)).status_code for _ in range(2)] == [200, 200]

        assert wp.stat("http.connect_terminate.downstream_cx_total") == 2  # one per client
        assert wp.stat("http.main_internal.downstream_rq_completed") == 5
        # Requests, not client connections, are what is forwarded: one after the other, they reuse
        # one pooled inner HTTP/1.1 connection, hence one CONNECT, on one HBONE connection.
        assert wp.stat("cluster.connect_originate.upstream_cx_total") == 1
        assert wp.stat("cluster.hbone_upstream.upstream_rq_total") == 1
        assert wp.stat("cluster.hbone_upstream.upstream_cx_total") == 1
        dest.wait_stat("http.connect_terminate.downstream_rq_total", lambda n: n == 1)
        assert dest.stat("http.connect_terminate.downstream_cx_total") == 1
        assert "envoy bug" not in wp.log_tail(200).lower()
