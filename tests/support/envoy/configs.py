"""Envoy bootstrap configs for the three HBONE roles: terminate, originate and waypoint.

Shapes follow what istiod generates for an Envoy waypoint (facts §2.4, ``IS:pilot/pkg/networking/
core/listener_waypoint.go`` ``buildWaypointInbound``; ``cluster_waypoint.go``) and what was seen to
work with Envoy 1.40 (``shared/reference/envoy-peer.md`` "Configurations that worked"). Every
function returns a plain dict (a bootstrap without ``admin``: :class:`EnvoyProcess` adds that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from tests.support.envoy.certs import CertPaths

Address = tuple[str, int]
Config = dict[str, Any]

HBONE_PORT = 15008
TYPES = "type.googleapis.com/envoy.extensions."
HCM_TYPE = TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = TYPES + "filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": TYPES + "filters.http.router.v3.Router"},
}
_HTTP_OPTIONS = TYPES + "upstreams.http.v3.HttpProtocolOptions"
# The internal listener's key for the destination it restores (envoy-peer.md, Waypoint).
ORIGINAL_DST_LOCAL = "envoy.filters.listener.original_dst.local_ip"
ORIGINAL_DST_REMOTE = "envoy.filters.listener.original_dst.remote_ip"
# What an ORIGINAL_DST cluster dials when set (Envoy docs, well-known filter state).
_ORIGINAL_DST_CLUSTER_ADDR = "envoy.network.transport_socket.original_dst_address"


def socket_address(addr: Address) -> Config:
    return {"socket_address": {"address": addr[0], "port_value": addr[1]}}


def _tls_params() -> Config:
    # Min AND max: Envoy's upstream default maximum is TLS 1.2, so a minimum alone fails every
    # connection (envoy-peer.md gotcha 1); istiod pins both (facts §1.2, buildCommonConnectTLSContext).
    return {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}


def _common_tls(certs: CertPaths, san_matcher: Config) -> Config:
    return {
        "tls_params": _tls_params(),
        "alpn_protocols": ["h2"],
        "tls_certificates": [
            {"certificate_chain": {"filename": str(certs.chain)}, "private_key": {"filename": str(certs.key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(certs.root)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san_matcher}],
        },
    }


def downstream_tls(certs: CertPaths, trust_domain: str) -> Config:
    """Terminating side: client certificate required, any identity of the trust domain (facts §1.2)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPES + "transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _common_tls(certs, {"prefix": f"spiffe://{trust_domain}/"}),
        },
    }


def upstream_tls(certs: CertPaths, san_matcher: Config) -> Config:
    """Originating side: present our certificate, check the peer's URI SAN; no SNI (facts §1.2)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPES + "transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _common_tls(certs, san_matcher),
        },
    }


Windows = tuple[int, int]
"""HTTP/2 (initial stream window, initial connection window) in bytes; None: Envoy's defaults."""

ZTUNNEL_WINDOWS: Windows = (4 << 20, 16 << 20)
"""ztunnel's HBONE flow control (facts §1.3: 4 MiB per stream, 16 MiB per connection)."""


def http2_options(windows: Windows | None = None) -> Config:
    """``allow_connect``, and the flow-control windows when given (Envoy's defaults otherwise)."""
    options: Config = {"allow_connect": True}
    if windows is not None:
        options["initial_stream_window_size"] = windows[0]
        options["initial_connection_window_size"] = windows[1]
    return options


def http2_upstream_options(windows: Windows | None = None) -> Config:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": http2_options(windows)},
        }
    }


Sharing = Literal["ONCE", "TRANSITIVE"]


def _filter_state_values(entries: list[tuple[str, str]], shared: Sharing) -> list[Config]:
    return [
        {
            "object_key": key,
            "format_string": {"text_format_source": {"inline_string": value}},
            "shared_with_upstream": shared,
        }
        for key, value in entries
    ]


def set_filter_state(entries: list[tuple[str, str]], shared: Sharing = "TRANSITIVE") -> Config:
    """HTTP filter: each ``(key, format)`` becomes filter state shared with the upstream connection.

    ONCE reaches the next hop only (istiod's ``connect_authority`` filter); TRANSITIVE reaches
    every hop after it. Shared values enter Envoy's upstream pool keys: TRANSITIVE ones gave the
    waypoint chain a pool per downstream connection (tests/envoy/test_waypoint_chain.py).
    """
    return {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": TYPES + "filters.http.set_filter_state.v3.Config",
            "on_request_headers": _filter_state_values(entries, shared),
        },
    }


def set_connection_filter_state(entries: list[tuple[str, str]], shared: Sharing = "ONCE") -> Config:
    """Network filter: the same, set once per (internal) connection when it is accepted."""
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": TYPES + "filters.network.set_filter_state.v3.Config",
            "on_new_connection": _filter_state_values(entries, shared),
        },
    }


def connect_terminate_listener(
    name: str, listen: Address, certs: CertPaths, trust_domain: str, cluster: str, filters: list[Config],
    windows: Windows | None = None,
) -> Config:
    """HTTP/2 CONNECT terminate on 15008; each CONNECT's bytes go raw to ``cluster``.

    Ordinary CONNECT only: ``connect_matcher`` answers extended CONNECT with 404 (gotcha 4).
    """
    route = {
        "match": {"connect_matcher": {}},
        "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
    }
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "HTTP2",
        "http2_protocol_options": http2_options(windows),
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [*filters, ROUTER_FILTER],
    }
    return {
        "name": name,
        "address": socket_address(listen),
        "filter_chains": [
            {
                "transport_socket": downstream_tls(certs, trust_domain),
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        ],
    }


def _static_cluster(name: str, target: Address) -> Config:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(target)}}]}],
        },
    }


def original_dst_cluster(name: str, **extra: Any) -> Config:
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
        **extra,
    }


def hbone_terminate(
    listen: Address,
    cert_dir: CertPaths,
    forward_to: Address | Literal["authority"],
    *,
    trust_domain: str = "cluster.local",
    windows: Windows | None = None,
) -> Config:
    """Envoy as a destination ztunnel: HBONE in, raw TCP out to ``forward_to`` or to ``:authority``.

    ``"authority"`` copies the CONNECT ``:authority`` into the ORIGINAL_DST cluster's address
    (Envoy's own set_filter_state example), the way ztunnel dials the authority (facts §1.4).
    """
    filters: list[Config] = []
    if forward_to == "authority":
        filters.append(set_filter_state([(_ORIGINAL_DST_CLUSTER_ADDR, "%REQ(:AUTHORITY)%")]))
        cluster = original_dst_cluster("target")
    else:
        cluster = _static_cluster("target", forward_to)
    listener = connect_terminate_listener(
        "connect_terminate", listen, cert_dir, trust_domain, "target", filters, windows
    )
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def hbone_originate(
    listen: Address, peer: Address, authority: str, cert_dir: CertPaths, expected_san: str,
    windows: Windows | None = None,
) -> Config:
    """Envoy as a source ztunnel: plain TCP in, one CONNECT ``authority`` per connection to ``peer``.

    The peer must present exactly ``expected_san`` (facts §1.2 client side, ``verify_full_san``).
    """
    tcp_proxy = {
        "@type": TCP_PROXY_TYPE,
        "stat_prefix": "originate",
        "cluster": "hbone",
        "tunneling_config": {"hostname": authority},
    }
    listener = {
        "name": "originate",
        "address": socket_address(listen),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}]}
        ],
    }
    cluster = _static_cluster("hbone", peer)
    cluster["transport_socket"] = upstream_tls(cert_dir, {"exact": expected_san})
    cluster["typed_extension_protocol_options"] = http2_upstream_options(windows)
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def http_backend(listen: Address, large_body: Path | None = None, *, max_large: int = 8 << 20) -> Config:
    """An application that answers fast in HTTP/1.1 and h2c: ``/`` → 200 with 13 bytes, as the
    nginx of envoy-peer.md's baseline did; ``/large`` → 200 with ``large_body``'s contents."""
    routes: list[Config] = []
    if large_body is not None:
        body = {"filename": str(large_body)}
        routes.append({"match": {"prefix": "/large"}, "direct_response": {"status": 200, "body": body}})
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "hello, world\n"}},
        }
    )
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "backend",
        "codec_type": "AUTO",
        "route_config": {
            "max_direct_response_body_size_bytes": max_large,
            "virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [ROUTER_FILTER],
    }
    listener = {
        "name": "backend",
        "address": socket_address(listen),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {"static_resources": {"listeners": [listener], "clusters": []}}
