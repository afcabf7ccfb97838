"""Every refusal of the HBONE server has its reason in the log, a count and an ``on_refused``
call, and disturbs nothing else (issue 2 item 3). Handshake reasons come from
``classify_handshake_error``; the checks after it follow ztunnel's server (facts §1.2: client
certificate required, same trust domain, ALPN h2) and its CONNECT checks (facts §1.4: 400 for a
malformed ``:authority`` or one that is not the local pod, ``IPMismatch``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

from tests.hbone.helpers import Echo, MiB, Sink, open_sockets, other_tasks, until
from waypoint.errors import TunnelError
from waypoint.hbone.fastpath import PREFACE
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.hbone.server import HboneServer, TunnelRequest
from waypoint.identity import tls
from waypoint.identity.ca import DevCA
from waypoint.identity.spiffe import Identity
from waypoint.testing.certs import dev_ca, expired_cert, identity, workload_cert

SERVER_IP, GOOD_IP, BAD_IP = "127.0.3.100", "127.0.3.101", "127.0.3.102"
SERVER_ID, CLIENT_ID = identity("ns1", "server"), identity("ns2", "client")
HANDSHAKE_TIMEOUT_S = 1.0


@dataclass
class Server:
    server: HboneServer
    port: int
    refused: list[tuple[str, str, tuple[str, int]]] = field(default_factory=list)


async def answer(req: TunnelRequest) -> None:
    """Echo every tunnel whose authority names the local pod; 400 ``authority_not_local`` for the
    rest, as ztunnel's ``validate_destination`` (``ZT:src/proxy/inbound.rs``)."""
    assert req.parsed is not None
    if req.parsed.host != req.local_address[0]:
        req.refuse(400, "authority_not_local", f"{req.authority} is not {req.local_address[0]}")
    else:
        req.accept(Echo)


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    sockets = open_sockets()
    refused: list[tuple[str, str, tuple[str, int]]] = []
    server = HboneServer(
        lambda ip: tls.server_context(workload_cert("ns1", "server")),
        lambda ssl_object: tls.verify_client(ssl_object, "cluster.local"),
        answer,
        lambda reason, detail, peer: refused.append((reason, detail, peer)),
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
    )
    listener = await server.listen(SERVER_IP, 0)
    yield Server(server, listener.sockets[0].getsockname()[1], refused)
    await server.close(grace_s=1.0)
    await until(lambda: open_sockets() <= sockets, what="sockets back to the baseline")
    assert other_tasks() == set()


def _client_ctx(cert_ident: Identity | None = None, *, expired: bool = False, foreign_ca: bool = False,
                alpn: str = "h2") -> ssl.SSLContext:
    """A client context that trusts the mesh root (so only the *server* can refuse)."""
    if cert_ident is None:  # no client certificate at all
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=dev_ca().root_pem.decode())
    elif expired:
        ctx = tls.client_context(expired_cert(cert_ident.namespace, cert_ident.service_account))
    elif foreign_ca:
        ctx = tls.client_context(DevCA.create("cluster.local").issue(cert_ident))
        ctx.load_verify_locations(cadata=dev_ca().root_pem.decode())
    else:
        ctx = tls.client_context(dev_ca().issue(cert_ident))  # the mesh CA, any trust domain in the SAN
    ctx.set_alpn_protocols([alpn])
    return ctx


# reason -> how a client gets it
BAD_CLIENTS: dict[str, Callable[[], ssl.SSLContext | bytes | None]] = {
    "untrusted_ca": lambda: _client_ctx(CLIENT_ID, foreign_ca=True),
    "expired": lambda: _client_ctx(CLIENT_ID, expired=True),
    "no_client_cert": lambda: _client_ctx(None),
    "no_alpn_h2": lambda: _client_ctx(CLIENT_ID, alpn="http/1.1"),
    "trust_domain_mismatch": lambda: _client_ctx(Identity("other.domain", "ns2", "client")),
    "not_tls": lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "handshake_timeout": lambda: None,  # connects and says nothing
}


async def bad_client(port: int, how: ssl.SSLContext | bytes | None) -> tuple[str, int]:
    """Connect the way ``how`` says, wait for the server to end it, return our address."""
    if isinstance(how, ssl.SSLContext):
        try:
            reader, writer = await asyncio.open_connection(
                SERVER_IP, port, ssl=how, server_hostname="", local_addr=(BAD_IP, 0)
            )
        except (ssl.SSLError, ConnectionError) as exc:  # pragma: no cover - TLS 1.3 fails on read
            raise AssertionError("in TLS 1.3 the client's handshake finishes first") from exc
    else:
        reader, writer = await asyncio.open_connection(SERVER_IP, port, local_addr=(BAD_IP, 0))
        if how:
            writer.write(how)
    address: tuple[str, int] = writer.get_extra_info("sockname")[:2]
    try:  # the server ends it: an alert, EOF or a reset (a refused h2 client gets no HBONE byte)
        while await asyncio.wait_for(reader.read(65536), HANDSHAKE_TIMEOUT_S + 10):
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    writer.close()
    return address


@pytest.mark.parametrize("reason", sorted(BAD_CLIENTS))
async def test_each_refusal_is_logged_counted_and_reported(
    srv: Server, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="waypoint.hbone.server")
    address = await bad_client(srv.port, BAD_CLIENTS[reason]())
    await until(lambda: srv.server.refusals[reason] == 1, what=f"refusal {reason}")
    assert [(r, p) for r, _d, p in srv.refused] == [(reason, address)]
    assert sum(srv.server.refusals.values()) == 1
    line = f"{address[0]}:{address[1]} refused: {reason}"
    assert any(line in rec.getMessage() and rec.levelno == logging.INFO for rec in caplog.records)
    assert not srv.server.connections  # nothing left of the refused connection


def _pool() -> HbonePool:
    return HbonePool(
        lambda ident: tls.client_context(workload_cert(ident.namespace, ident.service_account)),
        tls.verify_server, bind_source_ip=True,
    )


async def test_connect_refusals_answer_400_and_keep_the_connection(srv: Server) -> None:
    pool = _pool()
    key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, srv.port), GOOD_IP)
    try:
        for authority, reason in [("not an authority", "malformed_authority"),
                                  ("10.1.2.3:80", "authority_not_local")]:
            with pytest.raises(TunnelError) as err:
                await pool.open(key, authority, (), Sink)
            assert err.value.status == 400
            assert srv.refused[-1][0] == reason
            assert srv.refused[-1][2][0] == GOOD_IP
        stream, sink = await pool.open(key, f"{SERVER_IP}:80", (), Sink)
        stream.write(b"still here")
        await until(lambda: sink.count == 10)  # type: ignore[attr-defined]
        stream.close()
        assert pool.connections_opened == 1
        assert dict(srv.server.refusals) == {"malformed_authority": 1, "authority_not_local": 1}
    finally:
        await pool.close()


async def test_refused_clients_do_not_disturb_a_flowing_tunnel(srv: Server) -> None:
    """One good tunnel carries 8 MiB each way while every kind of refused client comes at once."""
    pool = _pool()
    key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, srv.port), GOOD_IP)
    blob = os.urandom(8 * MiB)
    try:
        stream, sink = await pool.open(key, f"{SERVER_IP}:80", (), Sink)
        assert isinstance(sink, Sink)

        async def send() -> None:
            for i in range(0, len(blob), 256 * 1024):
                stream.write(blob[i : i + 256 * 1024])
                await asyncio.sleep(0)  # interleave with the refusals
            stream.write_eof()

        bad = [bad_client(srv.port, make()) for make in BAD_CLIENTS.values()]
        await asyncio.gather(send(), *bad)
        await until(lambda: sink.eof, timeout=60, what="echo complete")
        assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
        assert await asyncio.wait_for(sink.lost, 5) is None  # ended cleanly, never reset
        assert pool.connections_opened == 1
        assert dict(srv.server.refusals) == dict.fromkeys(BAD_CLIENTS, 1)
    finally:
        await pool.close()


def _server_frames(data: bytes) -> list[Frame]:
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


async def test_a_peer_sending_broken_frames_loses_only_its_own_connection(srv: Server) -> None:
    """An authenticated peer that breaks HTTP/2 (a WINDOW_UPDATE of 0 on the connection, RFC 9113
    §6.9: PROTOCOL_ERROR) gets GOAWAY and is closed; a tunnel on another connection flows on."""
    pool = _pool()
    key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), (SERVER_IP, srv.port), GOOD_IP)
    blob = os.urandom(4 * MiB)
    try:
        stream, sink = await pool.open(key, f"{SERVER_IP}:80", (), Sink)
        assert isinstance(sink, Sink)
        stream.write(blob[: len(blob) // 2])
        reader, writer = await asyncio.open_connection(
            SERVER_IP, srv.port, ssl=_client_ctx(CLIENT_ID), server_hostname="", local_addr=(BAD_IP, 0)
        )
        writer.write(PREFACE + SettingsFrame(0).serialize() + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
        received = b""
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                received += chunk
        writer.close()
        stream.write(blob[len(blob) // 2 :])
        stream.write_eof()
        await until(lambda: sink.eof, timeout=60, what="echo complete")
        assert sink.count == len(blob) and sink.hash.digest() == hashlib.sha256(blob).digest()
        goaways = [f for f in _server_frames(received) if isinstance(f, GoAwayFrame)]
        assert [g.error_code for g in goaways] == [ErrorCodes.PROTOCOL_ERROR]
        await until(lambda: len(srv.server.connections) == 1, what="the broken connection dropped")
        assert pool.connections_opened == 1  # the good tunnel's connection is the one left
    finally:
        await pool.close()
