"""`waypoint ca init` / `waypoint ca issue`, run in-process, then used for a real handshake."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.identity.peers import ThreadedTLSServer, close, echo, open_client
from waypoint.cli import main
from waypoint.identity import tls
from waypoint.identity.certs import load_istio_layout
from waypoint.identity.cli import parse_duration
from waypoint.identity.spiffe import Identity


async def test_init_then_issue_writes_istio_files_that_handshake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, server_dir, client_dir = tmp_path / "ca", tmp_path / "server", tmp_path / "client"
    assert main(["ca", "init", "--dir", str(ca_dir), "--trust-domain", "mesh.example"]) == 0
    out = capsys.readouterr().out
    assert str(ca_dir / "root-cert.pem") in out and str(ca_dir / "root-key.pem") in out
    assert stat.S_IMODE((ca_dir / "root-key.pem").stat().st_mode) == 0o600

    waypoint_uri = "spiffe://mesh.example/ns/ns1/sa/waypoint"
    issue = ["ca", "issue", "--dir", str(ca_dir)]
    assert main([*issue, "--spiffe", waypoint_uri, "--out", str(server_dir)]) == 0
    assert str(server_dir / "cert-chain.pem") in capsys.readouterr().out
    args = [*issue, "--namespace", "ns2", "--service-account", "sleep", "--out", str(client_dir)]
    assert main([*args, "--lifetime", "1h30m"]) == 0

    server_cert, client_cert = load_istio_layout(server_dir), load_istio_layout(client_dir)
    assert server_cert.identity == Identity.parse(waypoint_uri)
    assert client_cert.not_after - client_cert.not_before == parse_duration("90m")  # type: ignore[operator]

    server_ctx = tls.server_context(server_cert)
    with ThreadedTLSServer(server_ctx, lambda conn: tls.verify_client(conn, "mesh.example")) as server:
        reader, writer, conn = await open_client(server.port, tls.client_context(client_cert))
        assert tls.verify_server(conn, [server_cert.identity]) == server_cert.identity
        assert (await server.next_outcome()).identity == Identity("mesh.example", "ns2", "sleep")
        assert await echo(reader, writer, b"ok") == b"ok"
        await close(writer)


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 0
    root = (tmp_path / "root-cert.pem").read_bytes()
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "root-cert.pem").read_bytes() == root
    assert main(["ca", "init", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "root-cert.pem").read_bytes() != root


@pytest.mark.parametrize(
    "identity_args",
    [
        ["--spiffe", "spiffe://cluster.local/ns/a"],
        ["--spiffe", "spiffe://other.domain/ns/a/sa/b"],  # not the CA's trust domain
        ["--namespace", "a"],
        ["--spiffe", "spiffe://cluster.local/ns/a/sa/b", "--namespace", "a", "--service-account", "b"],
        ["--namespace", "a", "--service-account", "b", "--lifetime", "forever"],
    ],
)
def test_issue_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], identity_args: list[str]
) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path / "ca")]) == 0
    argv = ["ca", "issue", "--dir", str(tmp_path / "ca"), "--out", str(tmp_path / "out"), *identity_args]
    assert main(argv) == 2
    assert "waypoint ca issue:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_argparse_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ca", "issue", "--dir", str(tmp_path)])  # no --out
    assert info.value.code == 2


def test_issue_without_a_ca_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ca", "issue", "--dir", str(tmp_path), "--namespace", "a", "--service-account", "b"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert "cannot load CA" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "minutes"), [("24h", 1440), ("90m", 90), ("1h30m", 90), ("7d", 10080), ("120s", 2)]
)
def test_parse_duration(text: str, minutes: int) -> None:
    assert parse_duration(text).total_seconds() == minutes * 60


@pytest.mark.parametrize("text", ["", "0h", "h", "24", "1x", "1h 30m", "-1h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
