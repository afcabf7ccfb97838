"""Rewrite, redirect and header-modifier semantics (httproute_types.go HTTPPathModifier table,
HTTPRequestRedirectFilter; Istio conversion.go createRedirectFilter/createRewriteFilter)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.routing.helpers import backend, http_route, request, resolve
from waypoint.l7.routing.decision import DecisionKind, HeaderMutation
from waypoint.l7.routing.model import PathModifier, RequestRedirect
from waypoint.l7.routing.rewrite import apply_mutations, redirect_location, replace_prefix


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "want"),
    [  # the spec's table, row by row
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/a/b", "/", "/x", "/x/a/b"),
    ],
)
def test_replace_prefix_table(path: str, prefix: str, replacement: str, want: str) -> None:
    assert replace_prefix(path, prefix, replacement) == want


def rewrite_rule(prefix: str, rewrite: dict[str, Any]) -> dict[str, Any]:
    return {
        "matches": [{"path": {"value": prefix}}],
        "filters": [{"type": "URLRewrite", "urlRewrite": rewrite}],
        "backendRefs": [backend("v1")],
    }


def test_url_rewrite_keeps_query_and_sets_authority() -> None:
    full = rewrite_rule(
        "/full", {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}, "hostname": "h.example"}
    )
    pre = rewrite_rule("/pre", {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/p"}})
    routes = [http_route([full, pre])]
    d = resolve(routes, request("/full/x?q=1"))
    assert (d.new_path, d.new_authority) == ("/one?q=1", "h.example")
    d = resolve(routes, request("/pre/a/b?z"))
    assert (d.new_path, d.new_authority) == ("/p/a/b?z", None)


@pytest.mark.parametrize(
    ("redirect", "authority", "path", "want"),
    [
        (RequestRedirect(), "echo", "/r", "http://echo/r"),
        (
            RequestRedirect(hostname="example.org"),
            "echo:8080",
            "/r",
            "http://example.org:8080/r",
        ),  # request port kept
        (RequestRedirect(port=8083), "echo", "/port", "http://echo:8083/port"),
        (RequestRedirect(port=80), "echo:8080", "/p", "http://echo/p"),  # default port left out
        (RequestRedirect(scheme="https"), "echo:8080", "/s", "https://echo/s"),  # scheme -> its default port
        (RequestRedirect(scheme="https", port=8443), "echo", "/s", "https://echo:8443/s"),
        (RequestRedirect(scheme="https", port=443), "echo", "/s", "https://echo/s"),
        (RequestRedirect(path=PathModifier("ReplaceFullPath", "/new")), "echo", "/old/x", "http://echo/new"),
        (
            RequestRedirect(path=PathModifier("ReplacePrefixMatch", "/rep")),
            "echo",
            "/orig/lemon",
            "http://echo/rep/lemon",
        ),
        (RequestRedirect(), "[fd00::1]:8080", "/v6", "http://[fd00::1]:8080/v6"),
    ],
)
def test_redirect_location(redirect: RequestRedirect, authority: str, path: str, want: str) -> None:
    assert redirect_location(redirect, authority, path, "", "/orig") == want


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_status_codes(code: int) -> None:
    rule = {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": code}}]}
    d = resolve([http_route([rule])], request("/x?keep=1", authority="echo"))
    assert (d.kind, d.status, d.location) == (DecisionKind.REDIRECT, code, "http://echo/x?keep=1")


def test_backend_level_redirect_and_rewrite() -> None:
    rule = {
        "backendRefs": [
            backend("v1", filters=[{"type": "RequestRedirect", "requestRedirect": {"hostname": "b.example"}}])
        ]
    }
    d = resolve([http_route([rule])], request("/a"))
    assert d.kind is DecisionKind.REDIRECT and d.location == "http://b.example/a"
    rule = {
        "matches": [{"path": {"value": "/a"}}],
        "backendRefs": [
            backend(
                "v1",
                filters=[
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}},
                    }
                ],
            )
        ],
    }
    d = resolve([http_route([rule])], request("/a/c"))
    assert d.new_path == "/b/c"


def test_header_modifiers_rule_then_backend_in_order() -> None:
    rule = {
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": "X-Set", "value": "s"}],
                    "add": [{"name": "X-Add", "value": "a"}],
                    "remove": ["X-Rm"],
                },
            },
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"add": [{"name": "X-Resp", "value": "r"}]},
            },
        ],
        "backendRefs": [
            backend(
                "v1",
                filters=[
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"add": [{"name": "X-Backend", "value": "b"}]},
                    }
                ],
            )
        ],
    }
    d = resolve(
        [http_route([rule])], request(headers={"X-Set": "old", "X-Add": "first", "X-RM": "gone", "Keep": "k"})
    )
    seen = apply_mutations(
        list(request(headers={"X-Set": "old", "X-Add": "first", "X-RM": "gone", "Keep": "k"}).headers),
        d.request_headers,
    )
    assert sorted(seen) == sorted(
        [("x-set", "s"), ("x-add", "first"), ("x-add", "a"), ("keep", "k"), ("x-backend", "b")]
    )
    assert d.response_headers == (HeaderMutation(add=(("x-resp", "r"),)),)
