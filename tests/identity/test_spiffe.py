"""SPIFFE ID parsing, as strict as ztunnel's (ZT:src/identity/manager.rs L68-90; facts §1.2)."""

from __future__ import annotations

import pytest

from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity, InvalidIdentity

GOOD = [
    ("spiffe://cluster.local/ns/default/sa/default", ("cluster.local", "default", "default")),
    ("spiffe://cluster.local/ns/istio-system/sa/ztunnel", ("cluster.local", "istio-system", "ztunnel")),
    (
        "spiffe://td.example.com/ns/bookinfo/sa/bookinfo-reviews",
        ("td.example.com", "bookinfo", "bookinfo-reviews"),
    ),
    ("spiffe://cluster.local/ns/ns1/sa/waypoint", ("cluster.local", "ns1", "waypoint")),
]

BAD = [
    ("cluster.local/ns/a/sa/b", "scheme"),
    ("http://cluster.local/ns/a/sa/b", "scheme"),
    ("SPIFFE://cluster.local/ns/a/sa/b", "scheme"),
    ("spiffe:/cluster.local/ns/a/sa/b", "scheme"),
    ("spiffe://cluster.local/ns/a/sa", "parts"),
    ("spiffe://cluster.local/ns/a/sa/b/", "parts"),
    ("spiffe://cluster.local/ns/a/sa/b/c", "parts"),
    ("spiffe://cluster.local", "parts"),
    ("spiffe://", "parts"),
    ("", "scheme"),
    ("spiffe://cluster.local/namespace/a/sa/b", "'ns'"),
    ("spiffe://cluster.local/sa/b/ns/a", "'ns'"),
    ("spiffe://cluster.local/ns/a/serviceaccount/b", "'sa'"),
    ("spiffe:///ns/a/sa/b", "empty trust domain"),
    ("spiffe://cluster.local/ns//sa/b", "empty namespace"),
    ("spiffe://cluster.local/ns/a/sa/", "empty service account"),
]


@pytest.mark.parametrize(("uri", "parts"), GOOD)
def test_parse_good(uri: str, parts: tuple[str, str, str]) -> None:
    identity = Identity.parse(uri)
    assert (identity.trust_domain, identity.namespace, identity.service_account) == parts
    assert str(identity) == uri == identity.uri


@pytest.mark.parametrize(("uri", "complaint"), BAD)
def test_parse_bad_names_the_problem(uri: str, complaint: str) -> None:
    with pytest.raises(InvalidIdentity, match=complaint):
        Identity.parse(uri)


def test_invalid_identity_is_a_value_error() -> None:
    assert issubclass(InvalidIdentity, ValueError)


def test_constructor_refuses_parts_that_would_not_round_trip() -> None:
    with pytest.raises(InvalidIdentity, match="contains '/'"):
        Identity("cluster.local", "a/b", "c")
    with pytest.raises(InvalidIdentity, match="empty namespace"):
        Identity("cluster.local", "", "c")


def test_identities_are_values() -> None:
    a = Identity(DEFAULT_TRUST_DOMAIN, "ns", "sa")
    assert a == Identity.parse("spiffe://cluster.local/ns/ns/sa/sa")
    assert len({a, Identity.parse(str(a))}) == 1
    assert DEFAULT_TRUST_DOMAIN == "cluster.local"
