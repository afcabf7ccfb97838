"""PeerAuthentication at the destination ztunnel, with real sockets: plaintext into B's 15006
listener, mTLS through A's SOCKS5 -> HBONE -> B.

istiod converts PeerAuthentication into L4 DENY policies (``IS:architecture/ambient/peer-
authentication.md``; ``IS:pilot/pkg/serviceregistry/ambient/authorization.go``): STRICT denies a
connection with no peer identity (``notPrincipals: [presence]``), which is every plaintext one
(facts §1.1, 15006 row: ``ZT:src/proxy/inbound_passthrough.rs`` runs ``assert_rbac``); mTLS always
has one. A deny closes the connection and counts ``response_flags="DENY"``.

As in ``test_authz.py``, the plaintext listener is bound on the pod's own address, so without
iptables the connection's original destination is the listener itself. An *allowed* plaintext
connection is then spliced back into that listener; B dials from 127.0.0.1 here
(``bind_client_ip=False``, the kernel's source for 127/8), and the ``loop-guard`` policy denies
that second turn. So "allowed" shows on the wire as exactly one refusal naming ``loop-guard``, and
"denied" as one naming the converted PeerAuthentication, never both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.apps import tcp_echo
from tests.support.wait import wait_for
from waypoint.identity.certs import DevCertificateProvider
from waypoint.roles.ztunnel import ZtunnelRole
from waypoint.testing.certs import dev_ca

from .mesh import CLIENT_IP, pod, socks5_connect
from .test_authz import Mesh, closed, closed_with, policy
from .test_e2e import scrape

pytestmark = pytest.mark.timeout(30)

POD_IP = "127.0.9.61"  # secure-1 (app=secure) on node-b: this file's own pod and port
APP_PORT = 7061
OTHER_IP = "127.0.8.61"  # plaintext client: a pod on node-a, so the source is a known workload
STATIC = "istio-system/istio_converted_static_strict"
LOOP_GUARD = policy("loop-guard", "default", """
    selector: {matchLabels: {app: secure}}
    action: DENY
    rules: [{from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]}]
""")


def peer_authn(name: str, ns: str, mode: str, selector: str = "", ports: dict[int, str] | None = None) -> str:
    spec = f"  mtls: {{mode: {mode}}}\n"
    if selector:
        spec += f"  selector: {{matchLabels: {{app: {selector}}}}}\n"
    if ports:
        spec += "  portLevelMtls: {" + ", ".join(f"{p}: {{mode: {m}}}" for p, m in ports.items()) + "}\n"
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")


MESH_STRICT = peer_authn("default", "istio-system", "STRICT")


@pytest.fixture
async def mesh(mesh_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Mesh]]]:
    (mesh_dir / "more.yaml").write_text("\n---\n".join([
        pod("secure-1", POD_IP, "node-b", "secure", "secure", (APP_PORT,)),
        pod("plain-1", OTHER_IP, "node-a", "plain", "plain"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n",
    ]))
    roles: list[ZtunnelRole] = []
    provider = DevCertificateProvider(dev_ca())

    async def make(*docs: str) -> Mesh:
        m = Mesh(mesh_dir)
        m.write("peer.yaml", LOOP_GUARD, *docs)
        return await m.start(provider, roles, inbound_plaintext=(POD_IP, 0), bind_client_ip=False)

    yield make
    for role in roles:
        await role.stop(grace_s=0.5)


@pytest.fixture
async def app() -> AsyncIterator[list[str]]:
    peers: list[str] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await tcp_echo(reader, writer)

    server = await asyncio.start_server(echo, POD_IP, APP_PORT)
    yield peers
    server.close()


async def plaintext(m: Mesh, caplog: pytest.LogCaptureFixture) -> str:
    """One plaintext connection into B's 15006; the refusal it led to (the log line's detail)."""
    before = m.b.refusals.get("authorization_denied", 0)
    caplog.clear()
    reader, writer = await asyncio.open_connection(*m.b.addresses["inbound_plaintext"], local_addr=(OTHER_IP, 0))
    writer.write(b"ping")
    assert await closed(reader)
    writer.close()
    await wait_for(lambda: m.b.refusals.get("authorization_denied", 0) == before + 1, what="one refusal")
    lines = [r.getMessage() for r in caplog.records if "authorization_denied" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def denied_by_peer_authn(line: str) -> bool:
    return "converted" in line and "loop-guard" not in line


async def mtls(m: Mesh) -> tuple[int, bytes]:
    rep, reader, writer = await socks5_connect(m.a.addresses["socks5"], POD_IP, APP_PORT, CLIENT_IP)
    try:
        if rep != 0:
            return rep, b""
        writer.write(b"ping")
        return rep, await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


async def test_mesh_strict_denies_plaintext_and_lets_mtls_through(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    m = await mesh(MESH_STRICT)
    line = await plaintext(m, caplog)
    assert STATIC in line and "PeerAuthentication istio-system/default: STRICT" in line
    denied = closed_with(await scrape(m.b), "DENY")
    assert len(denied) == 1 and denied[0]["connection_security_policy"] == "unknown"
    assert denied[0]["destination_workload"] == "secure-1"
    assert await mtls(m) == (0, b"ping")  # HBONE carries a principal: allowed
    assert len(app) == 1  # the app saw only the mTLS connection
    assert m.b.config_dump()["local_pods"][POD_IP]["policies"] == ["default/loop-guard", STATIC]  # type: ignore[index]


async def test_namespace_permissive_over_mesh_strict_accepts_plaintext(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    m = await mesh(MESH_STRICT, peer_authn("default", "default", "PERMISSIVE"))
    line = await plaintext(m, caplog)
    assert "default/loop-guard" in line and not denied_by_peer_authn(line)  # the first turn was allowed
    assert await mtls(m) == (0, b"ping")


async def test_port_level_mtls_exempts_a_port_and_changes_apply_to_the_next_connection(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The listener's port is the original destination port: exempt it, then another one."""
    caplog.set_level(logging.INFO)
    m = await mesh(MESH_STRICT)
    port = m.b.addresses["inbound_plaintext"][1]
    assert STATIC in await plaintext(m, caplog)

    m.write("peer.yaml", LOOP_GUARD, MESH_STRICT, peer_authn("secure", "default", "UNSET", "secure",
                                                             {port: "PERMISSIVE"}))
    await m.reload()
    assert m.b.config_dump()["local_pods"][POD_IP]["policies"] == [  # type: ignore[index]
        "default/loop-guard", "default/converted_peer_authentication_secure"]
    assert "default/loop-guard" in await plaintext(m, caplog)  # exempt: allowed

    m.write("peer.yaml", LOOP_GUARD, MESH_STRICT, peer_authn("secure", "default", "UNSET", "secure",
                                                             {port + 1: "PERMISSIVE"}))
    await m.reload()
    line = await plaintext(m, caplog)  # another port is exempt; this one inherits the mesh's STRICT
    assert "default/converted_peer_authentication_secure" in line and "PeerAuthentication default/secure" in line

    m.write("peer.yaml", LOOP_GUARD)
    await m.reload()
    assert "default/loop-guard" in await plaintext(m, caplog)  # no PeerAuthentication: PERMISSIVE
    assert await mtls(m) == (0, b"ping")


async def test_workload_strict_port_under_permissive(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """PERMISSIVE with one STRICT port: only that port refuses plaintext (one group per STRICT port)."""
    caplog.set_level(logging.INFO)
    m = await mesh()
    port = m.b.addresses["inbound_plaintext"][1]
    m.write("peer.yaml", LOOP_GUARD, peer_authn("secure", "default", "PERMISSIVE", "secure", {port: "STRICT"}))
    await m.reload()
    assert denied_by_peer_authn(await plaintext(m, caplog))
    assert await mtls(m) == (0, b"ping")
