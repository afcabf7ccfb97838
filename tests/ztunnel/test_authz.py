"""AuthorizationPolicy at the destination ztunnel, with real traffic: client → SOCKS5 → ztunnel A →
HBONE → ztunnel B → app (and plaintext into B's 15006).

What ztunnel does, and so what these tests hold us to:
- the check runs before the app is dialled; a deny is an HBONE 401 (facts §1.4,
  ``ZT:src/proxy/inbound.rs`` ``serve_connect`` → ``assert_rbac``), which the source ztunnel turns
  into a closed client connection (SOCKS5: "not allowed by ruleset");
- a deny counts in the TCP metrics with ``response_flags="DENY"`` (``ZT:src/proxy/metrics.rs``);
- plaintext on 15006 runs the same check with no identity (``ZT:src/proxy/inbound_passthrough.rs``);
- a policy change closes live connections the new policy denies, as ztunnel's ``PolicyWatcher``
  (``ZT:src/proxy/connection_manager.rs``), and leaves allowed ones alone.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.apps import tcp_echo
from tests.support.wait import wait_for
from waypoint.errors import TunnelError
from waypoint.hbone.pool import HbonePool, PoolKey
from waypoint.identity import tls
from waypoint.identity.certs import DevCertificateProvider
from waypoint.mesh.folder import FolderSource
from waypoint.roles.runtime import folder_source
from waypoint.roles.ztunnel import ZtunnelRole
from waypoint.testing.certs import dev_ca, identity, workload_cert

from .conftest import settings
from .mesh import CLIENT_IP, SERVER_IP, SERVER_PORT, pod, socks5_connect
from .test_e2e import scrape

pytestmark = pytest.mark.timeout(30)

OTHER_IP = "127.0.8.11"  # pod other-1 (sa other), next to sleep on node-a
OTHER_PORT = SERVER_PORT + 1  # a second port of echo-1 (a DENY by port leaves it open)
SLEEP_ID = "cluster.local/ns/default/sa/sleep"
NOT_ALLOWED = 0x02  # SOCKS5 REP for a 401 from the destination


def policy(name: str, ns: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ") if spec.strip() else "  {}"
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


ALLOW_SLEEP = policy("allow-sleep", "default", f"""
    selector: {{matchLabels: {{app: echo}}}}
    action: ALLOW
    rules: [{{from: [{{source: {{principals: ["{SLEEP_ID}"]}}}}]}}]
""")


class Mesh:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.source: FolderSource = folder_source(str(folder))  # validators included
        self.a: ZtunnelRole
        self.b: ZtunnelRole

    def write(self, filename: str, *docs: str) -> None:
        (self.folder / filename).write_text("\n---\n".join(docs))

    async def reload(self) -> None:
        snapshot = self.source.poll()
        assert snapshot is not None, "the folder did not change"
        await self.b.apply(snapshot)

    async def start(self, provider: DevCertificateProvider, roles: list[ZtunnelRole], **b_settings: object) -> Mesh:
        """Node A (the client side) and node B (the pods under test, with ``b_settings``) on the
        folder as it is now; both are added to ``roles`` for the fixture to stop."""
        snapshot = self.source.reload()
        self.a = ZtunnelRole(settings("node-a", "127.0.8.1"), snapshot, provider)
        self.b = ZtunnelRole(settings("node-b", "127.0.9.1", **b_settings), snapshot, provider)
        for role in (self.a, self.b):
            await role.start()
            roles.append(role)
        return self


@pytest.fixture
async def mesh(mesh_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Mesh]]]:
    (mesh_dir / "more.yaml").write_text("\n---\n".join([
        pod("other-1", OTHER_IP, "node-a", "other", "other"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n",
    ]))
    roles: list[ZtunnelRole] = []
    provider = DevCertificateProvider(dev_ca())

    async def make(*policies: str, **b_settings: object) -> Mesh:
        m = Mesh(mesh_dir)
        if policies:
            m.write("authz.yaml", *policies)
        return await m.start(provider, roles, **b_settings)

    yield make
    for role in roles:
        await role.stop(grace_s=0.5)


@pytest.fixture
async def app() -> AsyncIterator[list[str]]:
    """echo-1's app on both ports: echoes, and records each client address it served."""
    peers: list[str] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await tcp_echo(reader, writer)

    servers = [await asyncio.start_server(echo, SERVER_IP, port) for port in (SERVER_PORT, OTHER_PORT)]
    yield peers
    for server in servers:
        server.close()


async def call(m: Mesh, source_ip: str, port: int = SERVER_PORT) -> tuple[int, bytes]:
    """One connection from ``source_ip`` to echo-1:``port``: (SOCKS5 REP, what came back)."""
    host = ("echo.default", 80) if port == SERVER_PORT else (SERVER_IP, port)
    rep, reader, writer = await socks5_connect(m.a.addresses["socks5"], *host, source_ip)
    try:
        if rep != 0:
            return rep, await asyncio.wait_for(reader.read(), 5)  # closed, nothing more
        writer.write(b"ping")
        return rep, await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """The peer closed (EOF) or reset the connection, with no more bytes, within 5 s."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


def closed_with(got: dict[str, list[tuple[dict[str, str], float]]], flag: str) -> list[dict[str, str]]:
    return [lbl for lbl, v in got.get("istio_tcp_connections_closed_total", []) if lbl["response_flags"] == flag
            for _ in range(int(v))]


async def test_allow_by_principal_lets_sleep_in_and_keeps_other_out(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """ZT:src/rbac.rs: an ALLOW that applies and does not match denies; the deny is a 401 before any dial."""
    caplog.set_level(logging.INFO)
    m = await mesh(ALLOW_SLEEP)
    assert await call(m, CLIENT_IP) == (0, b"ping")
    assert await call(m, OTHER_IP) == (NOT_ALLOWED, b"")  # connection closed, no bytes
    assert app == [CLIENT_IP]  # the app never saw the other pod
    assert m.b.refusals["authorization_denied"] == 1
    assert any("authorization_denied" in r.getMessage() and "default/allow-sleep" in r.getMessage()
               for r in caplog.records)
    got = await scrape(m.b)
    assert {lbl["reason"]: v for lbl, v in got["waypoint_refusals_total"]}["authorization_denied"] == 1
    denied = closed_with(got, "DENY")
    assert [d["source_principal"] for d in denied] == ["spiffe://cluster.local/ns/default/sa/other"]
    assert denied[0]["reporter"] == "destination" and denied[0]["destination_workload"] == "echo-1"
    dump = m.b.config_dump()["local_pods"]
    assert dump[SERVER_IP]["policies"] == ["default/allow-sleep"]  # type: ignore[index]


async def test_denied_tunnel_is_401_on_the_wire(mesh: Callable[..., Awaitable[Mesh]], app: list[str]) -> None:
    """facts §1.4: AuthorizationPolicy deny (L4 RBAC) → 401 Unauthorized to the HBONE client."""
    await mesh(ALLOW_SLEEP)
    cert = workload_cert("default", "other")
    ctx = tls.client_context(cert)
    pool = HbonePool(lambda _i: ctx, tls.verify_server)
    key = PoolKey(cert.identity, frozenset({identity("default", "echo")}), (SERVER_IP, 15008))
    try:
        with pytest.raises(TunnelError) as err:
            await pool.open(key, f"{SERVER_IP}:{SERVER_PORT}", (), asyncio.Protocol)
        assert err.value.status == 401
    finally:
        await pool.close()
    assert app == []


async def test_deny_by_port(mesh: Callable[..., Awaitable[Mesh]], app: list[str]) -> None:
    m = await mesh(policy("deny-7000", "default", f"""
        action: DENY
        rules: [{{to: [{{operation: {{ports: ["{SERVER_PORT}"]}}}}]}}]
    """))
    assert await call(m, CLIENT_IP) == (NOT_ALLOWED, b"")
    assert await call(m, CLIENT_IP, OTHER_PORT) == (0, b"ping")


@pytest.mark.parametrize(("ns", "allowed"), [("default", False), ("istio-system", False), ("legacy", True)],
                         ids=["own-namespace", "root-namespace-mesh-wide", "other-namespace-never"])
async def test_allow_nothing_scope(mesh: Callable[..., Awaitable[Mesh]], app: list[str], ns: str,
                                   allowed: bool) -> None:
    """``spec: {}`` is allow-nothing for its namespace; in the root namespace for the whole mesh;
    a policy in another namespace never applies (IS:pilot/pkg/model/authorization.go)."""
    m = await mesh(policy("allow-nothing", ns, ""))
    assert await call(m, CLIENT_IP) == ((0, b"ping") if allowed else (NOT_ALLOWED, b""))


@pytest.mark.parametrize(("ns", "allowed"), [("mesh-root", False), ("istio-system", True)],
                         ids=["configured-root-applies", "istio-system-is-then-ordinary"])
async def test_root_namespace_is_configurable(mesh: Callable[..., Awaitable[Mesh]], app: list[str], ns: str,
                                              allowed: bool) -> None:
    """``--root-namespace`` (Istio's meshConfig ``rootNamespace``) moves the mesh-wide scope."""
    m = await mesh(policy("allow-nothing", ns, ""), root_namespace="mesh-root")
    assert await call(m, CLIENT_IP) == ((0, b"ping") if allowed else (NOT_ALLOWED, b""))


async def test_plaintext_on_15006_denied_without_a_principal(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """facts §1.1 (15006 runs RBAC too): with no identity, ``notPrincipals: ["*"]`` matches plaintext.
    Without iptables the listener itself stands for the REDIRECTed destination: bound on the pod's
    address, its own address is the original destination (waypoint/l4/origdst.py)."""
    caplog.set_level(logging.INFO)
    m = await mesh(policy("require-mtls", "default", """
        selector: {matchLabels: {app: echo}}
        action: DENY
        rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
    """), inbound_plaintext=(SERVER_IP, 0))
    reader, writer = await asyncio.open_connection(*m.b.addresses["inbound_plaintext"], local_addr=(OTHER_IP, 0))
    writer.write(b"ping")
    assert await closed(reader)  # closed (reset: "ping" was never read), never spliced
    writer.close()
    assert m.b.refusals["authorization_denied"] == 1
    assert any("default/require-mtls" in r.getMessage() for r in caplog.records)
    denied = closed_with(await scrape(m.b), "DENY")
    assert len(denied) == 1 and denied[0]["connection_security_policy"] == "unknown"
    assert await call(m, CLIENT_IP) == (0, b"ping")  # mTLS has a principal: allowed
    assert app == [CLIENT_IP]


async def test_policy_change_applies_to_new_connections_and_closes_live_ones_it_denies(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str]
) -> None:
    """ZT:src/proxy/connection_manager.rs PolicyWatcher: on a policy update every tracked inbound
    connection is checked again; those now denied are closed, the others keep flowing."""
    m = await mesh()
    live = {}
    for ip in (CLIENT_IP, OTHER_IP):
        rep, reader, writer = await socks5_connect(m.a.addresses["socks5"], "echo.default", 80, ip)
        assert rep == 0
        writer.write(b"one")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"
        live[ip] = (reader, writer)
    m.write("authz.yaml", ALLOW_SLEEP)
    await m.reload()
    assert await closed(live[OTHER_IP][0])  # cut: no longer allowed
    reader, writer = live[CLIENT_IP]
    writer.write(b"two")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"  # still allowed, untouched
    assert await call(m, OTHER_IP) == (NOT_ALLOWED, b"")  # and new ones are refused
    assert await call(m, CLIENT_IP) == (0, b"ping")
    for _, w in live.values():
        w.close()
    await wait_for(lambda: not m.b.conns.live)


async def test_bad_policy_is_rejected_naming_it_and_the_last_good_one_stays(
    mesh: Callable[..., Awaitable[Mesh]], app: list[str]
) -> None:
    m = await mesh(ALLOW_SLEEP)
    m.write("authz.yaml", ALLOW_SLEEP.replace("action: ALLOW", "action: PERMIT"))
    await m.reload()
    problems = [p.describe() for p in m.source.problems]
    assert len(problems) == 1, problems
    assert "authz.yaml" in problems[0] and "allow-sleep" in problems[0] and "action" in problems[0]
    assert await call(m, OTHER_IP) == (NOT_ALLOWED, b"")  # the good version is still in force
    assert await call(m, CLIENT_IP) == (0, b"ping")
