"""Every HTTPRoute feature through the waypoint, checking the response and what the backend saw.

Gateway API semantics as Istio converts them (facts §3; ``IS:pilot/pkg/config/kube/gateway/
conversion.go`` convertHTTPRoute): matches and precedence, weights, header modifiers, redirect,
URL rewrite, mirror, timeouts (504), retries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.wait import wait_for

from . import manifests as m
from .apps import EchoApp
from .conftest import MeshFactory, RunningMesh

pytestmark = pytest.mark.timeout(60)
URL = f"http://{m.ECHO_VIP}"


def to(service: str, weight: int | None = None, **extra: Any) -> m.Doc:
    return m.backend_ref(service, m.HTTP_PORT, weight, **extra)


def route(*rules: m.Doc, name: str = "r") -> m.Doc:
    return m.http_route(name, "echo", list(rules))


async def mesh_with(make_mesh: MeshFactory, *rules: m.Doc) -> RunningMesh:
    return await make_mesh(m.standard(route(*rules)))


async def test_path_matches_and_precedence(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/p"}}], "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/p/longer"}}], "backendRefs": [to("echo-v2")]},
        {"matches": [{"path": {"type": "Exact", "value": "/p/exact"}}], "backendRefs": [to("echo-mirror")]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}],
         "backendRefs": [to("echo-v2")]},
        # Among equal paths: more header matches, then more query matches, then a method, wins.
        {"matches": [{"path": {"type": "PathPrefix", "value": "/h"}, "headers": [{"name": "x-a", "value": "1"}]}],
         "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/h"}, "headers": [
            {"name": "x-a", "value": "1"}, {"name": "x-b", "type": "RegularExpression", "value": "b+"}]}],
         "backendRefs": [to("echo-v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [
            {"name": "env", "value": "canary"}]}], "backendRefs": [to("echo-v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}}], "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "method": "DELETE"}],
         "backendRefs": [to("echo-mirror")]},
    )
    cases: list[tuple[str, str, dict[str, str], str]] = [
        ("GET", "/p", {}, "echo-v1"),
        ("GET", "/p/other", {}, "echo-v1"),
        ("GET", "/p/longer/x", {}, "echo-v2"),  # the longest prefix wins over rule order
        ("GET", "/p/longerx", {}, "echo-v1"),  # prefixes match whole segments
        ("GET", "/p/exact", {}, "mirror"),  # Exact beats any prefix
        ("GET", "/p/exact/", {}, "echo-v1"),
        ("GET", "/re/123", {}, "echo-v2"),
        ("GET", "/h", {"x-a": "1"}, "echo-v1"),
        ("GET", "/h", {"x-a": "1", "x-b": "bbb"}, "echo-v2"),
        ("GET", "/q?env=canary", {}, "echo-v2"),
        ("GET", "/q?env=prod", {}, "echo-v1"),
        ("DELETE", "/m", {}, "mirror"),
    ]
    async with mesh.client(m.CLIENT_IP) as client:
        for method, path, headers, pod in cases:
            r = await client.request(method, URL + path, headers=headers)
            assert r.status_code == 200, (method, path, r.status_code, r.text)
            assert r.headers["x-pod"] == pod, (method, path, r.headers["x-pod"])
            assert r.json()["path"] == path
        # No rule matches: Envoy's route_not_found, 404.
        for method, path in (("GET", "/re/abc"), ("GET", "/m"), ("GET", "/other")):
            r = await client.request(method, URL + path)
            assert r.status_code == 404, (method, path)


async def test_weighted_backends_split_80_20(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(make_mesh, {"backendRefs": [to("echo-v1", 80), to("echo-v2", 20)]})
    counts = {"echo-v1": 0, "echo-v2": 0}

    async def worker(n: int) -> None:
        async with mesh.client(m.CLIENT_IP) as client:
            for _ in range(n):
                r = await client.get(URL + "/w")
                counts[r.headers["x-pod"]] += 1

    await asyncio.gather(*(worker(100) for _ in range(10)))
    # Binomial(1000, 0.8): sd 12.6; 5 sd either side keeps this from flaking.
    assert sum(counts.values()) == 1000
    assert 737 <= counts["echo-v1"] <= 863, counts


async def test_header_modifiers(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(make_mesh, {
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "x-set", "value": "set"}], "add": [{"name": "x-add", "value": "added"}],
                "remove": ["x-remove"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "x-pod", "value": "hidden"}], "add": [{"name": "x-resp", "value": "r"}],
                "remove": ["content-type"]}},
        ],
        "backendRefs": [to("echo-v1", filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "add": [{"name": "x-backend-level", "value": "yes"}]}}])],
    })
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(URL + "/hm", headers={"x-set": "old", "x-add": "mine", "x-remove": "gone"})
    assert r.status_code == 200
    seen = echo_apps["v1"].seen[-1].headers
    assert seen["x-set"] == "set" and seen["x-add"] == "mine,added" and "x-remove" not in seen
    assert seen["x-backend-level"] == "yes"
    assert r.headers["x-pod"] == "hidden" and r.headers["x-resp"] == "r" and "content-type" not in r.headers


async def test_request_redirect(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {
                "hostname": "new.example", "statusCode": 301,
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/secure"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/full"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {
                "port": 8443, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/elsewhere"}}}]},
    )
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(URL + "/old/page?q=1")
        assert (r.status_code, r.headers["location"]) == (301, "http://new.example/new/page?q=1")
        r = await client.get(URL + "/secure/x")
        assert (r.status_code, r.headers["location"]) == (302, f"https://{m.ECHO_VIP}/secure/x")
        r = await client.get(URL + "/full/x")
        assert (r.status_code, r.headers["location"]) == (302, f"http://{m.ECHO_VIP}:8443/elsewhere")
    assert not echo_apps["v1"].seen and not echo_apps["v2"].seen  # answered by the waypoint


async def test_url_rewrite(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "filters": [
            {"type": "URLRewrite", "urlRewrite": {
                "hostname": "rewritten.example",
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}],
         "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/full"}}], "filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}],
         "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}], "filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
         "backendRefs": [to("echo-v1")]},
    )
    async with mesh.client(m.CLIENT_IP) as client:
        for path, want_path, want_host in (
            ("/api/users?x=1", "/v2/users?x=1", "rewritten.example"),
            ("/full/a/b?k=v", "/one?k=v", m.ECHO_VIP),
            ("/strip/rest", "/rest", m.ECHO_VIP),
            ("/strip", "/", m.ECHO_VIP),
        ):
            r = await client.get(URL + path)
            assert r.status_code == 200, path
            assert (r.json()["path"], r.json()["host"]) == (want_path, want_host), path


async def test_request_mirror(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(make_mesh, {
        "filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": "echo-mirror", "port": m.HTTP_PORT}}}],
        "backendRefs": [to("echo-v1")],
    })
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.post(URL + "/mirrored", content=b"payload", headers={"x-id": "7"})
    assert r.status_code == 200 and r.headers["x-pod"] == "echo-v1"
    await wait_for(lambda: bool(echo_apps["mirror"].seen), what="the mirror's copy")
    copy = echo_apps["mirror"].seen[0]
    assert (copy.method, copy.path, copy.body_len, copy.headers["x-id"]) == ("POST", "/mirrored", 7, "7")
    # Envoy's shadow host: the authority gets "-shadow" appended.
    assert copy.headers["host"] == f"{m.ECHO_VIP}-shadow"


async def test_timeouts_answer_504(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/slow/request"}}],
         "timeouts": {"request": "300ms"}, "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/slow/backend"}}],
         "timeouts": {"request": "5s", "backendRequest": "300ms"}, "backendRefs": [to("echo-v1")]},
        {"backendRefs": [to("echo-v1")]},
    )
    async with mesh.client(m.CLIENT_IP) as client:
        for path in ("/slow/request", "/slow/backend"):
            started = asyncio.get_running_loop().time()
            r = await client.get(URL + path)
            elapsed = asyncio.get_running_loop().time() - started
            assert (r.status_code, r.text) == (504, "upstream request timeout"), path
            assert 0.25 < elapsed < 3.0, (path, elapsed)
        assert (await client.get(URL + "/fast")).status_code == 200


async def test_retry_stanza_retries_listed_codes(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/flaky/none"}}],
         "retry": {"attempts": 0}, "backendRefs": [to("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/flaky/retry"}}],
         "retry": {"codes": [503], "backoff": "10ms"}, "backendRefs": [to("echo-v1")]},
    )
    async with mesh.client(m.CLIENT_IP) as client:
        r = await client.get(URL + "/flaky/retry")
        assert r.status_code == 200 and echo_apps["v1"].hits["/flaky/retry"] == 2
        r = await client.get(URL + "/flaky/none")  # attempts: 0 turns retries off
        assert r.status_code == 503 and echo_apps["v1"].hits["/flaky/none"] == 1


async def test_retry_on_connect_failure(make_mesh: MeshFactory, echo_apps: dict[str, EchoApp]) -> None:
    """A pod whose app is down: the destination ztunnel refuses the tunnel (503) and a retry picks
    the other endpoint (Istio's retry_on includes connect-failure; previous_hosts predicate)."""
    await echo_apps["v2"].stop()
    mesh = await mesh_with(make_mesh, {"retry": {"attempts": 2, "codes": [503]}, "backendRefs": [to("echo")]})
    async with mesh.client(m.CLIENT_IP) as client:
        for i in range(4):
            r = await client.get(URL + f"/cf{i}")
            assert r.status_code == 200 and r.headers["x-pod"] == "echo-v1"


async def test_rule_with_only_invalid_backends_answers_500(make_mesh: MeshFactory,
                                                           echo_apps: dict[str, EchoApp]) -> None:
    mesh = await mesh_with(
        make_mesh,
        {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}], "backendRefs": [to("no-such-svc")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/badkind"}}],
         "backendRefs": [{"group": "example.com", "kind": "Thing", "name": "x", "port": 80}]},
        {"backendRefs": [to("echo-v1")]},
    )
    async with mesh.client(m.CLIENT_IP) as client:
        assert (await client.get(URL + "/missing")).status_code == 500
        assert (await client.get(URL + "/badkind")).status_code == 500
        assert (await client.get(URL + "/ok")).status_code == 200
    dump = mesh.waypoint("waypoint").config_dump()
    # `waypoint dev` shows the same in its one admin dump, beside the ztunnel's sections
    dev_dump = mesh.dev.ztunnel.config_dump()["waypoint_roles"]
    assert [d["waypoint"] for d in dev_dump] == ["app/waypoint"]  # type: ignore[attr-defined]
    assert dev_dump[0]["routes"] == dump["routes"]  # type: ignore[index]
    status = {r["route"]: r for r in dump["routes"]}["HTTPRoute/app/r"]
    resolved = status["parents"][0]["conditions"]["ResolvedRefs"]
    assert resolved["status"] == "False" and resolved["reason"] in ("BackendNotFound", "InvalidKind")
    assert "no-such-svc" in resolved["message"] and "spec.rules[0].backendRefs[0]" in resolved["message"]
    assert status["parents"][0]["conditions"]["Accepted"]["status"] == "True"
