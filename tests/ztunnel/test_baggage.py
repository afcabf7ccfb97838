"""Peer metadata in ``baggage`` (facts §1.4): the destination ztunnel answers its 200 with the
destination workload's baggage (``ZT:src/proxy/inbound.rs`` ``build_response``, response baggage
on by default), and describes a source it cannot look up by the baggage that source sent
(``build_inbound_request`` ``derived_source``)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.wait import wait_for
from waypoint.hbone.headers import Baggage, parse_baggage
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.testing.certs import identity, workload_cert

from .mesh import SERVER_IP, SERVER_PORT
from .test_e2e import App, scrape

REMOTE = "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=cart,service.name=cart,service.version=v9"


class _Closed(asyncio.Protocol):
    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def test_200_carries_destination_baggage_and_unknown_source_is_described_by_its_own(make_role: Any) -> None:
    b = await make_role("node-b", "127.0.9.1")
    cert = workload_cert("default", "sleep")
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server)  # dials from 127.0.0.1: no pod has that address
    key = PoolKey(cert.identity, frozenset({identity("default", "echo")}), (SERVER_IP, 15008))
    async with App(0) as app:
        stream, proto = await pool.open(key, f"{SERVER_IP}:{SERVER_PORT}", (("baggage", REMOTE),), _Closed)
        answer = dict(stream.get_extra_info("headers"))
        stream.write_eof()
        await asyncio.wait_for(proto.done, 10)  # type: ignore[attr-defined]
        await wait_for(lambda: bool(app.received) and not b.conns.live)
    await pool.close()

    assert parse_baggage([answer["baggage"]]) == Baggage(
        cluster=b.settings.cluster_id, namespace="default", workload_type="pod", workload_name="echo-1",
        service="echo", version="latest",
    )
    opened = (await scrape(b))["istio_tcp_connections_opened_total"]
    (labels, count), = [(lbl, v) for lbl, v in opened if lbl["reporter"] == "destination"]
    assert count == 1
    assert (labels["source_workload"], labels["source_workload_namespace"], labels["source_canonical_service"],
            labels["source_canonical_revision"], labels["source_cluster"]) == ("cart", "shop", "cart", "v9", "east")
    assert labels["source_principal"] == str(cert.identity)  # proven by mTLS, never taken from baggage
    assert labels["destination_workload"] == "echo-1"
