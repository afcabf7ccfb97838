"""CONNECT authority and ztunnel's request headers (facts §1.4), table-driven."""

from __future__ import annotations

import pytest

from waypoint.hbone.headers import (
    Authority,
    Baggage,
    build_baggage,
    build_forwarded,
    check_connect,
    format_authority,
    new_traceparent,
    parse_authority,
    parse_baggage,
    parse_forwarded_for,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.2.8:9080", Authority("10.0.2.8", 9080, True)),
        ("[::1]:80", Authority("::1", 80, True)),
        ("[fd00::a:1]:15008", Authority("fd00::a:1", 15008, True)),
        ("reviews.default.svc.cluster.local:9080", Authority("reviews.default.svc.cluster.local", 9080, False)),
        ("localhost:1", Authority("localhost", 1, False)),
    ],
)
def test_parse_authority(text: str, expected: Authority) -> None:
    assert parse_authority(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    ["", "10.0.0.1", "10.0.0.1:", ":80", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:8a", "::1:80", "[::1]80",
     "[zz::1]:80", "bad host:80", "a/b:80", "10.0.0.256:80", "[10.0.0.1]:80"],
)
def test_parse_authority_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_authority(text)


def test_format_authority_brackets_ipv6() -> None:
    assert format_authority("10.0.0.1", 80) == "10.0.0.1:80"
    assert format_authority("::1", 80) == "[::1]:80"


def test_forwarded_always_quotes_for_and_adds_host_when_service_addressed() -> None:
    # ZT:src/proxy/outbound.rs build_forwarded tests (facts §1.4)
    assert build_forwarded("10.0.0.1", 1234) == 'for="10.0.0.1:1234"'
    assert build_forwarded("::1", 80) == 'for="[::1]:80"'
    assert build_forwarded("10.0.0.1", 1, "reviews.ns.svc.cluster.local") == (
        'for="10.0.0.1:1";host=reviews.ns.svc.cluster.local'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('for="10.0.0.1:1234"', ("10.0.0.1", 1234)),
        ('for="[::1]:80";host=a.b', ("::1", 80)),
        ("for=10.0.0.1", ("10.0.0.1", None)),
        ('proto=https;For="10.1.1.1:5", for=10.2.2.2', ("10.1.1.1", 5)),
        ("for=_hidden", None),
        ("host=a", None),
    ],
)
def test_parse_forwarded_for(value: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_forwarded_for(value) == expected


def test_baggage_order_and_omission() -> None:
    assert build_baggage(cluster="Kubernetes", namespace="default", workload_type="deployment",
                         workload_name="sleep", service="sleep", version="v1") == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,"
        "service.name=sleep,service.version=v1"
    )
    assert build_baggage(namespace="ns", zone="z1") == "k8s.namespace.name=ns,cloud.availability_zone=z1"


def test_traceparent_is_random_per_call_and_well_formed() -> None:
    a, b = new_traceparent(), new_traceparent()
    assert a != b
    version, trace, parent, flags = a.split("-")
    assert (version, len(trace), len(parent), flags) == ("00", 32, 16, "00")
    assert new_traceparent(lambda n: bytes(range(n))).startswith("00-000102030405060708090a0b0c0d0e0f-")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (((":method", "CONNECT"), (":authority", "a:1"), ("baggage", "x=y")), ("a:1", (("baggage", "x=y"),))),
        (((":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a:1")), 400),
        (((":method", "CONNECT"), (":authority", "a:1"), (":path", "/")), 0),
        (((":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/"),
          (":authority", "a:1")), 0),
        (((":method", "CONNECT"),), 0),
        (((":authority", "a:1"), ("x", "y"), (":method", "CONNECT")), 0),
    ],
)
def test_check_connect(headers: tuple[tuple[str, str], ...], expected: object) -> None:
    assert check_connect(headers) == expected


def test_parse_baggage_reads_back_what_build_baggage_writes() -> None:  # ZT:src/baggage.rs parse_baggage_header
    sent = build_baggage(cluster="Kubernetes", namespace="default", workload_type="deployment",
                         workload_name="sleep", service="sleep", version="v1", region="r1", zone="z1")
    assert parse_baggage([sent]) == Baggage("Kubernetes", "default", "deployment", "sleep", "sleep", "v1", "r1", "z1")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], Baggage()),
        (["k8s.namespace.name=ns;prop=1, service.name=a%20b"], Baggage(namespace="ns", service="a b")),
        (["k8s.namespace.name=ns", "k8s.pod.name=p-1"],
         Baggage(namespace="ns", workload_type="pod", workload_name="p-1")),
        (["k8s.widget.name=x,other=1,=v,novalue,service.version="], Baggage()),  # unknown, malformed, empty: skipped
        (["service.name=a,service.name=b"], Baggage(service="b")),  # the last one wins
    ],
)
def test_parse_baggage_skips_what_it_does_not_know(values: list[str], expected: Baggage) -> None:
    assert parse_baggage(values) == expected
