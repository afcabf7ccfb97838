"""Each source, operation and ``when`` field, table-driven.

One ALLOW policy with a single rule is attached (selector at the ztunnel, ``targetRefs`` Service at
the waypoint); ``allowed`` says whether that rule matched. Sources: the API reference's field
docs, ``IS:pilot/pkg/security/authz/model/generator.go``, ``matcher/header.go``, ``ZT:src/rbac.rs``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.policy import world
from waypoint.policy.attributes import ConnectionFacts, RequestFacts
from waypoint.policy.authz import WaypointAuthorizer, ZtunnelAuthorizer

NS1_A = "cluster.local/ns/ns1/sa/a"
NS2_A = "cluster.local/ns/ns2/sa/a"


def _source(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def _op(**fields: Any) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def _when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"key": key}
    if values:
        cond["values"] = values
    if not_values:
        cond["notValues"] = not_values
    return {"when": [cond]}


def at_ztunnel(rule: dict[str, Any], facts: ConnectionFacts) -> bool:
    snap = world.snapshot([world.policy("r", {"selector": {"matchLabels": {"app": "b"}}, "rules": [rule]})])
    assert not snap.problems
    return ZtunnelAuthorizer.from_snapshot(snap).check(world.pod(snap), facts).allowed


def at_waypoint(rule: dict[str, Any], req: RequestFacts) -> bool:
    spec = {"targetRefs": [{"kind": "Service", "group": "", "name": "b"}], "rules": [rule]}
    snap = world.snapshot([world.policy("r", spec)])
    assert not snap.problems
    authz = WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap))
    return authz.check_request(world.service(snap), req).allowed


L4_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("principal exact", _source(principals=[NS1_A]), {}, True),
    ("principal other", _source(principals=[NS1_A]), {"principal": NS2_A}, False),
    ("principal prefix", _source(principals=["cluster.local/ns/ns1/*"]), {}, True),
    ("principal suffix", _source(principals=["*/sa/a"]), {"principal": NS2_A}, True),
    ("principal presence, mTLS", _source(principals=["*"]), {}, True),
    ("principal presence, plaintext", _source(principals=["*"]), {"principal": None}, False),
    ("notPrincipals presence, plaintext", _source(notPrincipals=["*"]), {"principal": None}, True),
    ("notPrincipals hit", _source(notPrincipals=[NS1_A]), {}, False),
    ("principal with spiffe:// never matches", _source(principals=[f"spiffe://{NS1_A}"]), {}, False),
    ("namespace", _source(namespaces=["ns1"]), {}, True),
    ("namespace prefix", _source(namespaces=["ns*"]), {"principal": NS2_A}, True),
    ("namespace, plaintext", _source(namespaces=["*"]), {"principal": None}, False),
    ("notNamespaces", _source(notNamespaces=["ns1"]), {"principal": NS2_A}, True),
    ("serviceAccount in the policy's namespace", _source(serviceAccounts=["a"]), {}, True),
    ("serviceAccount other namespace", _source(serviceAccounts=["a"]), {"principal": NS2_A}, False),
    ("serviceAccount ns/sa", _source(serviceAccounts=["ns2/a"]), {"principal": NS2_A}, True),
    ("notServiceAccounts", _source(notServiceAccounts=["ns1/a"]), {}, False),
    ("ipBlocks CIDR", _source(ipBlocks=["10.0.1.0/24"]), {}, True),
    ("ipBlocks single IP", _source(ipBlocks=["10.0.1.10"]), {}, True),
    ("ipBlocks miss", _source(ipBlocks=["10.0.2.0/24"]), {}, False),
    ("ipBlocks IPv6", _source(ipBlocks=["fd00::/64"]), {"source_ip": "fd00::5"}, True),
    ("ipBlocks v4 block vs v6 peer", _source(ipBlocks=["0.0.0.0/0"]), {"source_ip": "fd00::5"}, False),
    ("notIpBlocks", _source(notIpBlocks=["10.0.1.0/24"]), {}, False),
    ("ports", _op(ports=["18080"]), {}, True),
    ("ports miss", _op(ports=["18085"]), {}, False),
    ("notPorts", _op(notPorts=["18080"]), {}, False),
    ("when source.ip", _when("source.ip", ["10.0.1.0/24"]), {}, True),
    ("when source.ip notValues", _when("source.ip", None, ["10.0.1.10"]), {}, False),
    ("when source.namespace", _when("source.namespace", ["ns1"]), {}, True),
    ("when source.principal", _when("source.principal", [NS2_A]), {}, False),
    ("when destination.ip", _when("destination.ip", [world.POD_IP]), {}, True),
    ("when destination.port", _when("destination.port", None, ["18080"]), {}, False),
    ("fields ANDed", {"from": [{"source": {"principals": [NS1_A], "namespaces": ["ns2"]}}]}, {}, False),
    (
        "from entries ORed",
        {"from": [{"source": {"principals": [NS2_A]}}, {"source": {"namespaces": ["ns1"]}}]},
        {},
        True,
    ),
    ("from AND to", {**_source(namespaces=["ns1"]), **_op(ports=["1"])}, {}, False),
]


@pytest.mark.parametrize(("rule", "facts", "allowed"), [c[1:] for c in L4_CASES], ids=[c[0] for c in L4_CASES])
def test_l4_fields_at_ztunnel_and_waypoint(rule: dict[str, Any], facts: dict[str, Any], allowed: bool) -> None:
    conn_args = {"principal": NS1_A, **facts}
    assert at_ztunnel(rule, world.conn(**conn_args)) is allowed
    if "destination.ip" not in str(rule):  # the waypoint's destination is the service VIP
        assert at_waypoint(rule, world.request(**conn_args)) is allowed


L7_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("hosts case-insensitive", _op(hosts=["B.ns1.svc.cluster.local"]), {}, True),
    ("hosts suffix", _op(hosts=["*.example.com"]), {"host": "Foo.Example.com"}, True),
    ("hosts suffix not bare", _op(hosts=["*.example.com"]), {"host": "example.com"}, False),
    ("hosts: no port variants (istio#44080)", _op(hosts=["b"]), {"host": "b:8080"}, False),
    ("hosts with port written", _op(hosts=["b:*"]), {"host": "b:8080"}, True),
    ("notHosts", _op(notHosts=["deny.b.com"]), {"host": "DENY.b.com"}, False),
    ("methods", _op(methods=["GET", "HEAD"]), {"method": "HEAD"}, True),
    ("methods are case-sensitive", _op(methods=["get"]), {}, False),
    ("notMethods", _op(notMethods=["PUT"]), {"method": "PUT"}, False),
    ("paths exact ignores query", _op(paths=["/a"]), {"path": "/a?x=1"}, True),
    ("paths prefix", _op(paths=["/api/*"]), {"path": "/api/v1"}, True),
    ("paths suffix", _op(paths=["*.txt"]), {"path": "/a/b.txt"}, True),
    ("paths presence", _op(paths=["*"]), {"path": "/"}, True),
    ("paths template one segment", _op(paths=["/foo/{*}/bar"]), {"path": "/foo/x/bar"}, True),
    ("paths template not two segments", _op(paths=["/foo/{*}/bar"]), {"path": "/foo/x/y/bar"}, False),
    ("paths template many", _op(paths=["/foo/{**}"]), {"path": "/foo/x/y"}, True),
    ("notPaths", _op(paths=["/deny*"], notPaths=["/deny/allow"]), {"path": "/deny/allow"}, False),
    ("header value", _when("request.headers[X-Foo]", ["bar"]), {"headers": [("x-foo", "bar")]}, True),
    ("header prefix", _when("request.headers[x-foo]", ["ba*"]), {"headers": [("x-foo", "bar")]}, True),
    (
        "header repeated joined",
        _when("request.headers[x-foo]", ["a,b"]),
        {"headers": [("x-foo", "a"), ("x-foo", "b")]},
        True,
    ),
    ("header missing", _when("request.headers[x-foo]", ["*"]), {}, False),
    ("header notValues missing", _when("request.headers[x-foo]", None, ["bar"]), {}, True),
    ("remoteIpBlocks = peer IP", _source(remoteIpBlocks=["10.0.1.0/24"]), {}, True),
    ("when remote.ip", _when("remote.ip", None, ["10.0.1.10"]), {}, False),
    ("requestPrincipals: no JWT", _source(requestPrincipals=["*"]), {}, False),
    ("notRequestPrincipals: no JWT", _source(notRequestPrincipals=["*"]), {}, True),
    ("request.auth.claims: no JWT", _when("request.auth.claims[iss]", ["x"]), {}, False),
    ("connection.sni: unknown", _when("connection.sni", ["*"]), {}, False),
    ("operation fields ANDed", _op(methods=["GET"], paths=["/x"]), {"path": "/y"}, False),
]


@pytest.mark.parametrize(("rule", "req", "allowed"), [c[1:] for c in L7_CASES], ids=[c[0] for c in L7_CASES])
def test_l7_fields_at_waypoint(rule: dict[str, Any], req: dict[str, Any], allowed: bool) -> None:
    assert at_waypoint(rule, world.request(**req)) is allowed
