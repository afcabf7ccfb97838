"""Which protocol goes upstream: an undeclared port follows the downstream (Istio sets
``useDownstreamProtocol`` for such ports; Envoy's ``use_downstream_protocol_config``)."""

from __future__ import annotations

from waypoint.l7.routing.decision import ServiceRef
from waypoint.l7.upstream import UpstreamProtocol, UpstreamTarget, following
from waypoint.roles.waypoint_config import _upstream_protocol

SVC = ServiceRef("default", "echo", 80)


def test_declared_ports_keep_their_protocol_whatever_the_downstream() -> None:
    for declared in (UpstreamProtocol.HTTP1, UpstreamProtocol.HTTP2):
        target = UpstreamTarget("127.0.0.9", 80, SVC, declared)
        assert following(target, http2=True) is target
        assert following(target, http2=False) is target


def test_auto_follows_the_downstream() -> None:
    target = UpstreamTarget("127.0.0.9", 80, SVC, UpstreamProtocol.AUTO)
    assert following(target, http2=True).protocol is UpstreamProtocol.HTTP2
    assert following(target, http2=False).protocol is UpstreamProtocol.HTTP1
    assert following(target, http2=True).key != following(target, http2=False).key  # pooled apart


def test_istio_port_protocols_map_to_upstream_protocols() -> None:
    assert _upstream_protocol("HTTP") is UpstreamProtocol.HTTP1
    assert _upstream_protocol("HTTP2") is UpstreamProtocol.HTTP2
    assert _upstream_protocol("GRPC") is UpstreamProtocol.HTTP2
    assert _upstream_protocol("") is UpstreamProtocol.AUTO  # undeclared: sniffed downstream, followed upstream
