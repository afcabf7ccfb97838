"""Interop: Envoy 1.40 *originating* HBONE into our ``HboneServer`` (envoy-peer.md "Configurations
that worked", source side): TCP client → Envoy ``tcp_proxy`` tunnelling → our server, whose tunnel
handler echoes (``waypoint.l4.relay.Relay`` to a TCP echo would be the fuller path, but it asserts
``isinstance(transport, asyncio.Transport)``, which uvloop's TCPTransport is not; see the report).

Identity both ways, as ztunnel's TLS (facts §1.2): our server accepts Envoy's SPIFFE ID for its trust
domain and hands it to the tunnel handler; Envoy checks ours with an exact URI SAN match
(``verify_full_san``), and refuses the connection when it expects another identity.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
from pathlib import Path

from tests.hbone.helpers import Echo, MiB, until
from tests.support.envoy import EnvoyProcess, TestCA, hbone_originate
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.identity.spiffe import Identity

ENVOY_IP, OUR_IP, CLIENT_IP = "127.0.3.130", "127.0.3.131", "127.0.3.133"
AUTHORITY = "10.8.0.7:9080"  # a pod IP:port, as ztunnel sends it (facts §1.4)


def _with_wrong_san_listener(config: dict, wrong_san: str) -> dict:  # type: ignore[type-arg]
    """A second listener and cluster in the same Envoy whose cluster expects ``wrong_san``."""
    res = config["static_resources"]
    listener, cluster = copy.deepcopy(res["listeners"][0]), copy.deepcopy(res["clusters"][0])
    listener["name"] = "originate_wrong_san"
    listener["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] = "hbone_wrong_san"
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = "hbone_wrong_san"
    matchers = cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
    matchers["match_typed_subject_alt_names"][0]["matcher"] = {"exact": wrong_san}
    res["listeners"].append(listener)
    res["clusters"].append(cluster)
    return config


async def _through(port: int, blob: bytes) -> bytes:
    """Send ``blob`` to ``ENVOY_IP:port``, half-close, return everything that came back."""
    reader, writer = await asyncio.open_connection(ENVOY_IP, port, local_addr=(CLIENT_IP, 0))

    async def send() -> None:
        for i in range(0, len(blob), 256 * 1024):
            writer.write(blob[i : i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    received = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
            received += chunk
    except OSError:
        pass  # a refused tunnel may end in a reset (uvloop: ENOTCONN once Envoy closed first)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()
    return bytes(received)


async def test_envoy_originates_into_our_server(tmp_path: Path) -> None:
    ca = TestCA()
    our_id, envoy_id = ca.spiffe_id("ns1", "ours"), ca.spiffe_id("ns2", "envoy")
    envoy_certs = ca.write_cert_dir(tmp_path / "envoy", envoy_id)
    ctx = tls.server_context(ca.ca.issue(Identity.parse(our_id)))
    seen: list[tuple[object, str]] = []
    refused: list[str] = []  # "reason detail"

    async def on_tunnel(req: TunnelRequest) -> None:
        seen.append((req.peer_identity, req.authority))
        req.accept(Echo)

    server = HboneServer(
        lambda _ip: ctx, lambda s: tls.verify_client(s, "cluster.local"), on_tunnel,
        lambda reason, detail, _peer: refused.append(f"{reason} {detail}"),
    )
    our_port = (await server.listen(OUR_IP, 0)).sockets[0].getsockname()[1]
    config = hbone_originate((ENVOY_IP, 0), (OUR_IP, our_port), AUTHORITY, envoy_certs, our_id)
    config = _with_wrong_san_listener(config, ca.spiffe_id("ns1", "someone-else"))
    envoy = EnvoyProcess(config, tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        ports = {name: addr[1] for name, addr in envoy.listener_addresses().items()}
        blob = os.urandom(6 * MiB)
        back = await _through(ports["originate"], blob)
        assert len(back) == len(blob) and hashlib.sha256(back).digest() == hashlib.sha256(blob).digest()
        assert seen == [(Identity.parse(envoy_id), AUTHORITY)]  # Envoy's identity, its exact CONNECT
        assert refused == []

        # Envoy expects another SAN: it aborts the handshake, no CONNECT reaches us, no byte back
        assert await _through(ports["originate_wrong_san"], b"never delivered") == b""
        await until(lambda: refused, what="our server saw the refused handshake")
        # BoringSSL answers a SAN mismatch with a certificate_unknown alert; classify_handshake_error
        # has no name for that alert yet, hence handshake_failed (a name is asked for in the report)
        assert refused[0].startswith(("handshake_failed", "bad_certificate")) and "CERTIFICATE_UNKNOWN" in refused[0]
        assert len(seen) == 1
        fail_san = await asyncio.to_thread(
            envoy.wait_stat, "cluster.hbone_wrong_san.ssl.fail_verify_san", lambda v: v >= 1
        )
        assert fail_san >= 1
    finally:
        await asyncio.to_thread(envoy.stop)
        await server.close(grace_s=1.0)
