"""Real mTLS handshakes on loopback: what is accepted, and the reason given for each refusal.

Wire behaviour from facts §1.2 (ZT:src/tls/certificate.rs L316-380, ZT:src/tls/workload.rs).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.identity.peers import HOST, TIMEOUT_S, ThreadedTLSServer, close, echo, open_client
from waypoint.identity import tls
from waypoint.identity.ca import DevCA
from waypoint.identity.certs import WorkloadCertificate
from waypoint.identity.spiffe import Identity
from waypoint.identity.tls import PeerRejected, classify_handshake_error, verify_client, verify_server
from waypoint.testing.certs import dev_ca, expired_cert, workload_cert

TD = "cluster.local"
SERVER = Identity(TD, "ns1", "waypoint")
CLIENT = Identity(TD, "ns2", "sleep")


def _server(cert: WorkloadCertificate | None = None) -> ThreadedTLSServer:
    ctx = tls.server_context(cert or workload_cert("ns1", "waypoint"))
    return ThreadedTLSServer(ctx, lambda conn: verify_client(conn, TD))


def _client_ctx(cert: WorkloadCertificate | None = None) -> ssl.SSLContext:
    return tls.client_context(cert or workload_cert("ns2", "sleep"))


def _foreign_client_ctx(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A peer that is not one of ours (no client certificate): built from ssl directly."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=dev_ca().root_pem.decode())
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _leaf_der(cert: WorkloadCertificate) -> bytes:
    leaf = x509.load_pem_x509_certificates(cert.chain_pem)[0]
    return leaf.public_bytes(serialization.Encoding.DER)


async def _client_refusal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """In TLS 1.3 the client finishes first; a server's refusal arrives as an alert on read."""
    writer.write(b"ping")
    with pytest.raises((ssl.SSLError, ConnectionError)) as info:
        await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S)
    await close(writer)
    return classify_handshake_error(info.value)


def test_contexts_pin_tls13_h2_and_no_tickets() -> None:
    server = tls.server_context(workload_cert("ns1", "waypoint"))
    client = _client_ctx()
    for ctx in (server, client):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert server.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert server.options & ssl.OP_NO_TICKET and server.num_tickets == 0
    assert client.check_hostname is False


async def test_mutual_handshake_gives_both_sides_the_right_identity() -> None:
    with _server() as server:
        reader, writer, conn = await open_client(server.port, _client_ctx())
        assert verify_server(conn, [SERVER, Identity(TD, "other", "x")]) == SERVER
        assert conn.version() == "TLSv1.3" and conn.selected_alpn_protocol() == "h2"
        assert conn.cipher() is not None and conn.cipher()[0] in tls.AES_GCM_SUITES  # type: ignore[index]
        outcome = await server.next_outcome()
        assert outcome.kind == "ok" and outcome.identity == CLIENT
        assert await echo(reader, writer, b"hbone") == b"hbone"
        session = conn.session
        assert session is None or not session.has_ticket  # resumption off, as ztunnel
        await close(writer)


async def test_wrong_server_identity_is_san_mismatch() -> None:
    with _server() as server:
        _, writer, conn = await open_client(server.port, _client_ctx())
        with pytest.raises(PeerRejected) as info:
            verify_server(conn, {Identity(TD, "ns1", "not-the-waypoint")})
        assert info.value.reason == "san_mismatch"
        await close(writer)


async def test_server_from_untrusted_ca_is_refused_by_the_client() -> None:
    stranger = DevCA.create(TD).issue(SERVER)
    with _server(stranger) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await open_client(server.port, _client_ctx())
        assert classify_handshake_error(info.value) == "untrusted_ca"
        # uvloop's client drops the connection without sending the unknown_ca alert, so the
        # server only sees the handshake end (a blocking ssl client does send it)
        assert (await server.next_outcome()).kind == "handshake"


async def test_client_from_untrusted_ca_is_refused_by_the_server() -> None:
    ctx = _client_ctx(DevCA.create(TD).issue(CLIENT))
    ctx.load_verify_locations(cadata=dev_ca().root_pem.decode())  # it does trust the server
    with _server() as server:
        reader, writer, _ = await open_client(server.port, ctx)
        outcome = await server.next_outcome()
        assert (outcome.kind, outcome.reason) == ("handshake", "untrusted_ca")
        assert await _client_refusal(reader, writer) == "untrusted_ca"


async def test_expired_server_certificate() -> None:
    with _server(expired_cert("ns1", "waypoint")) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await open_client(server.port, _client_ctx())
        assert classify_handshake_error(info.value) == "expired"
        assert (await server.next_outcome()).kind == "handshake"


async def test_expired_client_certificate() -> None:
    with _server() as server:
        reader, writer, _ = await open_client(server.port, _client_ctx(expired_cert("ns2", "sleep")))
        outcome = await server.next_outcome()
        assert (outcome.kind, outcome.reason) == ("handshake", "expired")
        assert await _client_refusal(reader, writer) == "expired"


async def test_no_client_certificate() -> None:
    # facts §1.2: "A client cert is required" (inbound 15008 RequireClientCertificate)
    with _server() as server:
        reader, writer, _ = await open_client(server.port, _foreign_client_ctx(alpn=["h2"]))
        outcome = await server.next_outcome()
        assert (outcome.kind, outcome.reason) == ("handshake", "no_client_cert")
        assert await _client_refusal(reader, writer) == "no_client_cert"


async def test_client_alpn_other_than_h2_is_refused_by_the_server() -> None:
    ctx = _client_ctx()
    ctx.set_alpn_protocols(["http/1.1"])
    with _server() as server:
        _, writer, conn = await open_client(server.port, ctx)
        assert conn.selected_alpn_protocol() is None
        assert (await server.next_outcome()).reason == "no_alpn_h2"
        with pytest.raises(PeerRejected, match="no_alpn_h2"):
            verify_server(conn, [SERVER])  # and the client refuses the server too
        await close(writer)


async def test_client_from_another_trust_domain_is_refused() -> None:
    # ZT:src/tls/workload.rs TrustDomainVerifier: one SPIFFE ID must share the server's trust domain
    other = DevCA.create("other.example")
    server_ctx = tls.server_context(workload_cert("ns1", "waypoint"))
    server_ctx.load_verify_locations(cadata=other.root_pem.decode())  # chain is fine, domain is not
    client_ctx = _client_ctx(other.issue(Identity("other.example", "ns2", "sleep")))
    client_ctx.load_verify_locations(cadata=dev_ca().root_pem.decode())
    with ThreadedTLSServer(server_ctx, lambda conn: verify_client(conn, TD)) as server:
        _, writer, _ = await open_client(server.port, client_ctx)
        outcome = await server.next_outcome()
        assert (outcome.kind, outcome.reason) == ("rejected", "trust_domain_mismatch")
        await close(writer)


async def test_tls12_only_peer_is_refused() -> None:
    ctx = _client_ctx()
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with _server() as server:
        with pytest.raises(ssl.SSLError) as info:
            await open_client(server.port, ctx)
        assert classify_handshake_error(info.value) == "protocol_version"
        assert (await server.next_outcome()).reason == "protocol_version"


def test_checks_work_on_blocking_ssl_sockets() -> None:
    with _server() as server:
        raw = socket.create_connection((HOST, server.port), timeout=TIMEOUT_S)
        with _client_ctx().wrap_socket(raw) as conn:
            assert verify_server(conn, [SERVER]) == SERVER
            assert server.outcome().identity == CLIENT
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"


async def test_update_context_rotates_for_new_connections_only() -> None:
    """Rotation (facts §1.1 refresh at half-life): asyncio server, both sides ssl.SSLObject."""
    first = dev_ca().issue(SERVER)
    second = dev_ca().issue(SERVER)
    server_ctx = tls.server_context(first)
    accepted: asyncio.Queue[Identity] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(verify_client(writer.get_extra_info("ssl_object"), TD))
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        r1, w1, live = await open_client(port, _client_ctx())
        assert live.getpeercert(binary_form=True) == _leaf_der(first)
        assert await asyncio.wait_for(accepted.get(), TIMEOUT_S) == CLIENT
        assert await echo(r1, w1, b"before") == b"before"

        tls.update_context(server_ctx, second)

        r2, w2, fresh = await open_client(port, _client_ctx())
        assert fresh.getpeercert(binary_form=True) == _leaf_der(second)
        assert verify_server(fresh, [SERVER]) == SERVER
        assert await echo(r2, w2, b"new") == b"new"
        assert await echo(r1, w1, b"still alive") == b"still alive"  # the live connection is untouched
        assert live.getpeercert(binary_form=True) == _leaf_der(first)
        await close(w1)
        await close(w2)
    finally:
        srv.close()
        await srv.wait_closed()


async def test_update_context_adds_a_new_root_for_a_root_rotation() -> None:
    new_ca = DevCA.create(TD)
    server_ctx = tls.server_context(workload_cert("ns1", "waypoint"))
    with ThreadedTLSServer(server_ctx, lambda conn: verify_client(conn, TD)) as server:
        tls.update_context(server_ctx, new_ca.issue(SERVER))
        old_client = _client_ctx()
        old_client.load_verify_locations(cadata=new_ca.root_pem.decode())
        new_client = _client_ctx(new_ca.issue(CLIENT))
        for ctx in (old_client, new_client):
            _, writer, conn = await open_client(server.port, ctx)
            assert verify_server(conn, [SERVER]) == SERVER
            assert (await server.next_outcome()).identity == CLIENT
            await close(writer)


def test_peer_identities_skips_non_spiffe_uris() -> None:
    cert = workload_cert("ns1", "waypoint")
    assert tls.peer_identities(_leaf_der(cert)) == [SERVER]


def test_classify_other_errors() -> None:
    assert classify_handshake_error(PeerRejected("san_mismatch")) == "peer_rejected:san_mismatch"
    assert classify_handshake_error(ConnectionResetError()) == "handshake_failed"
    assert classify_handshake_error(TimeoutError()) == "handshake_failed"


def test_expired_helper_is_expired() -> None:
    assert expired_cert().not_after < datetime.now(UTC) - timedelta(minutes=30)


_CHACHA_ONLY_CONF = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = TLS_CHACHA20_POLY1305_SHA256
"""

_CHACHA_CLIENT = """
import socket, sys
from waypoint.identity import tls
from waypoint.identity.certs import load_istio_layout
cert = load_istio_layout(sys.argv[1])
raw = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
with tls.client_context(cert).wrap_socket(raw) as conn:
    print(conn.cipher()[0])
    try:
        tls.verify_server(conn, [])
    except tls.PeerRejected as exc:
        print(exc.reason)
"""


def test_chacha20_session_is_refused_after_the_handshake(tmp_path: Path) -> None:
    """ZT:src/tls/lib.rs L78-113: AES-GCM only. Python cannot limit TLS 1.3 suites, so a peer
    offering only ChaCha20 (forced here through an OpenSSL config file) completes the
    handshake and is refused by the post-handshake check."""
    (tmp_path / "openssl.cnf").write_text(_CHACHA_ONLY_CONF)
    workload_cert("ns2", "sleep").write_istio_layout(tmp_path / "client")
    env = {**os.environ, "OPENSSL_CONF": str(tmp_path / "openssl.cnf")}
    with _server() as server:
        done = subprocess.run(
            [sys.executable, "-c", _CHACHA_CLIENT, str(tmp_path / "client"), HOST, str(server.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S * 3,
            check=True,
        )
        assert done.stdout.split() == ["TLS_CHACHA20_POLY1305_SHA256", "cipher_not_aes_gcm"]
        outcome = server.outcome()
        assert (outcome.kind, outcome.reason) == ("rejected", "cipher_not_aes_gcm")


async def test_chain_with_an_intermediate_is_presented_in_full() -> None:
    ca = DevCA.create(TD, with_intermediate=True)
    server_ctx = tls.server_context(ca.issue(SERVER))
    with ThreadedTLSServer(server_ctx, lambda conn: verify_client(conn, TD)) as server:
        _, writer, conn = await open_client(server.port, _client_ctx(ca.issue(CLIENT)))
        assert verify_server(conn, [SERVER]) == SERVER  # only the root is trusted: the chain was sent
        assert (await server.next_outcome()).identity == CLIENT
        await close(writer)
