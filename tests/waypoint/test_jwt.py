"""RequestAuthentication at the waypoint with real traffic (client → SOCKS5 → ztunnel → HBONE → waypoint →
HBONE → ztunnel → app), keys made here and given inline or served by a real local JWKS server.

Behaviour from Istio's "Authorization with JWT" / "End user authentication" tasks: a request with an
invalid token gets 401 ``Jwt verification fails`` (Envoy ``jwt_authn/filter.cc`` ``onComplete``, with
``www-authenticate: Bearer realm=..., error="invalid_token"``); a request without a token passes
RequestAuthentication and is left to AuthorizationPolicy (``requestPrincipals: ["*"]`` → 403 from RBAC).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.policy.test_jwt import OTHER_RSA, RSA, jwk, jwks_text, sign

from . import manifests as m
from .apps import EchoApp
from .conftest import MeshFactory

pytestmark = pytest.mark.timeout(60)

ISS = "https://issuer.example"
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
JWKS_IP = m.ip("16.1")


def request_authn(name: str, rules: list[dict[str, Any]], refs: list[dict[str, str]] | None = None) -> m.Doc:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"targetRefs": refs or [GATEWAY_REF], "jwtRules": rules}}


def authz(name: str, rules: list[dict[str, Any]], action: str = "ALLOW") -> m.Doc:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"targetRefs": [GATEWAY_REF], "action": action, "rules": rules}}


def token(key: Any = RSA, **claims: Any) -> str:
    return sign({"iss": ISS, "sub": "alice", "exp": int(time.time()) + 600, **claims}, key)


def bearer(text: str) -> dict[str, str]:
    return {"authorization": f"Bearer {text}"}


async def test_valid_token_allows_missing_is_rbac_403_invalid_is_401(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]
) -> None:
    rules = [{"issuer": ISS, "jwks": jwks_text(jwk(RSA)),
              "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}]}]
    require = authz("require-jwt", [{"from": [{"source": {"requestPrincipals": ["*"]}}]}])
    mesh = await make_mesh(m.standard(request_authn("jwt", rules), require))
    url = f"http://{m.V1_VIP}/"
    async with mesh.client(m.CLIENT_IP) as client:
        ok = await client.get(url + "ok", headers={**bearer(token()), "x-jwt-sub": "forged"})
        missing = await client.get(url + "missing")
        bad_sig = await client.get(url + "bad", headers=bearer(token(OTHER_RSA)))
        expired = await client.get(url + "expired", headers=bearer(token(exp=int(time.time()) - 3600)))
        other_iss = await client.get(url + "iss", headers=bearer(token(iss="https://other.example")))
    assert ok.status_code == 200
    seen = ok.json()["headers"]
    assert seen["x-jwt-sub"] == "alice"  # outputClaimToHeaders; the client's forged value was dropped
    assert "authorization" not in seen  # forwardOriginalToken false: the token is removed
    assert missing.status_code == 403 and missing.content == b"RBAC: access denied"
    for reply, body in ((bad_sig, b"Jwt verification fails"), (expired, b"Jwt is expired"),
                        (other_iss, b"Jwt issuer is not configured")):
        assert reply.status_code == 401 and reply.content == body
        assert reply.headers["www-authenticate"].startswith(f'Bearer realm="http://{m.V1_VIP}/')
        assert reply.headers["www-authenticate"].endswith(', error="invalid_token"')
    assert echo_apps["v1"].paths() == ["/ok"]
    dump = mesh.waypoint("waypoint").config_dump()["jwt_authn"]
    assert dump["enforcing"] and dump["allowed"] == 1 and dump["denied"] == 3


async def test_claim_condition_and_forwarded_token(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    rules = [{"issuer": ISS, "jwks": jwks_text(jwk(RSA)), "forwardOriginalToken": True, "audiences": ["echo"]}]
    admins = authz("admins", [{"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
                                        {"key": "request.auth.audiences", "values": ["echo"]}]}])
    mesh = await make_mesh(m.standard(request_authn("jwt", rules), admins))
    admin, dev = token(groups=["dev", "admin"], aud="echo"), token(groups=["dev"], aud="echo")
    async with mesh.client(m.CLIENT_IP) as client:
        yes = await client.get(f"http://{m.V1_VIP}/admin", headers=bearer(admin))
        no = await client.get(f"http://{m.V1_VIP}/dev", headers=bearer(dev))
        wrong_aud = await client.get(f"http://{m.V1_VIP}/aud", headers=bearer(token(aud="web")))
    assert yes.status_code == 200 and yes.json()["headers"]["authorization"] == f"Bearer {admin}"
    assert no.status_code == 403 and no.content == b"RBAC: access denied"
    assert wrong_aud.status_code == 403 and wrong_aud.content == b"Audiences in Jwt are not allowed"
    assert echo_apps["v1"].paths() == ["/admin"]


class JwksServer:
    """A real HTTP server on loopback: ``/good`` serves the key set, ``/broken`` answers 500."""

    def __init__(self, keys: str) -> None:
        self.keys = keys.encode()
        self.hits: list[str] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        self.hits.append(path)
        status, body = (b"200 OK", self.keys) if path == "/good" else (b"500 Oops", b"{}")
        writer.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
                     b"\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    def uri(self, path: str) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://{JWKS_IP}:{port}{path}"


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks_text(jwk(RSA)))
    server.server = await asyncio.start_server(server.handle, JWKS_IP, 0)
    yield server
    server.server.close()


async def test_jwks_uri_fetched_and_a_failed_fetch_fails_closed(
    make_mesh: MeshFactory, echo_apps: dict[str, EchoApp], jwks_server: JwksServer
) -> None:
    broken_iss = "https://broken.example"
    rules = [{"issuer": ISS, "jwksUri": jwks_server.uri("/good")},
             {"issuer": broken_iss, "jwksUri": jwks_server.uri("/broken")}]
    mesh = await make_mesh(m.standard(request_authn("jwt", rules)))
    keys = mesh.waypoint("waypoint").jwt_keys
    await asyncio.wait_for(keys.attempted(jwks_server.uri("/good")), 10)
    await asyncio.wait_for(keys.attempted(jwks_server.uri("/broken")), 10)
    async with mesh.client(m.CLIENT_IP) as client:
        good = await client.get(f"http://{m.V1_VIP}/good", headers=bearer(token()))
        broken = await client.get(f"http://{m.V1_VIP}/broken", headers=bearer(token(iss=broken_iss)))
        anonymous = await client.get(f"http://{m.V1_VIP}/anonymous")  # no AuthorizationPolicy: allowed
    assert good.status_code == 200
    assert broken.status_code == 401 and broken.content == b"Jwt verification fails"
    assert anonymous.status_code == 200
    assert echo_apps["v1"].paths() == ["/good", "/anonymous"]
    assert {"/good", "/broken"} <= set(jwks_server.hits)
    assert json.loads(jwks_server.keys)["keys"][0]["kid"] == "k1"


async def test_rules_removed_at_runtime_stop_checking(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await make_mesh(m.standard(request_authn("jwt", [{"issuer": ISS, "jwks": jwks_text(jwk(RSA))}])))
    bad = bearer(token(OTHER_RSA))
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(f"http://{m.V1_VIP}/before", headers=bad)).status_code == 401
        mesh.write(m.standard())
        await mesh.reload()
        assert (await client.get(f"http://{m.V1_VIP}/after", headers=bad)).status_code == 200
    assert mesh.waypoint("waypoint").config_dump()["jwt_authn"]["enforcing"] is False
