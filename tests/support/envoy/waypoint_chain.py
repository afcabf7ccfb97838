"""Envoy as an Istio waypoint: HBONE in, L7 routing, HBONE out to the original destination.

The listener chain istiod builds (facts §2.4; ``IS:pilot/pkg/networking/core/listener_waypoint.go``
``buildWaypointInbound`` L183-221, ``cluster_waypoint.go`` L487-560), reduced to one service:

``connect_terminate`` (15008, TLS 1.3, CONNECT; set_filter_state copies ``:authority``, shared
ONCE) → cluster ``main_internal`` → internal listener ``main_internal`` (original_dst restores the
authority as the local address; a network set_filter_state shares it ONCE again, istiod's
``connect_authority`` of the direct-workload chain; HCM, codec AUTO; routes, header edits,
request ids) → cluster ``connect_originate`` → internal listener ``connect_originate`` (tcp_proxy,
``tunneling_config.hostname = %DOWNSTREAM_LOCAL_ADDRESS%``) → ``ORIGINAL_DST`` cluster with
``upstream_port_override: 15008`` and the waypoint's client certificate.

Pooling, as in istiod's waypoint: values shared with upstream enter Envoy's upstream pool keys;
shared TRANSITIVE, they split the inner HTTP pool per downstream connection (every client got its
own inner connections and CONNECTs). Shared ONCE per hop, inner requests from every client reuse
pooled connections, and the CONNECTs toward one destination ride one HBONE connection.

Routing, header manipulation and request ids are on so the benchmark compares like for like with
our waypoint: two HTTPRoute-like rules (a header-matched canary and a default), one request
header added per rule, one response header added, ``x-request-id`` generated.
"""

from __future__ import annotations

from tests.support.envoy.certs import CertPaths
from tests.support.envoy.configs import (
    HBONE_PORT,
    HCM_TYPE,
    ORIGINAL_DST_LOCAL,
    ORIGINAL_DST_REMOTE,
    ROUTER_FILTER,
    TCP_PROXY_TYPE,
    TYPES,
    Address,
    Config,
    connect_terminate_listener,
    http2_upstream_options,
    original_dst_cluster,
    set_connection_filter_state,
    set_filter_state,
    upstream_tls,
)

_ORIGINAL_DST_FILTER = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": TYPES + "filters.listener.original_dst.v3.OriginalDst"},
}

# What the waypoint adds, so tests and benchmarks can see the L7 work was done.
ROUTE_HEADER = "x-waypoint-route"
RESPONSE_HEADER = "x-waypoint"
CANARY_HEADER = "x-canary"


def _internal_cluster(name: str, *, keep_protocol: bool = False) -> Config:
    """A cluster whose one endpoint is the internal listener ``name``.

    The internal_upstream transport socket is what carries filter state across (gotcha 2).
    """
    cluster: Config = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": name}}}}
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": TYPES + "transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": TYPES + "transport_sockets.raw_buffer.v3.RawBuffer"},
                },
            },
        },
    }
    if keep_protocol:
        # Inner HTTP/1.1 stays HTTP/1.1 and h2c stays h2c all the way to the application.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
            }
        }
    return cluster


def _route(match: Config, route_name: str) -> Config:
    return {
        "name": route_name,
        "match": match,
        "route": {"cluster": "connect_originate", "timeout": "15s"},
        "request_headers_to_add": [
            {
                "header": {"key": ROUTE_HEADER, "value": route_name},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _main_internal_listener() -> Config:
    routes = [
        _route(
            {"prefix": "/", "headers": [{"name": CANARY_HEADER, "string_match": {"exact": "true"}}]}, "canary"
        ),
        _route({"prefix": "/"}, "default"),
    ]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "main_internal",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "route_config": {
            "name": "waypoint",
            "response_headers_to_add": [
                {
                    "header": {"key": RESPONSE_HEADER, "value": "envoy"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "virtual_hosts": [{"name": "service", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [ROUTER_FILTER],
    }
    # istiod's direct-workload chain re-shares the restored destination ONCE with the next hop
    # (``xdsfilters.ConnectAuthorityNetworkFilter``; listener_waypoint.go ``buildWaypointInternal``).
    connect_authority = set_connection_filter_state(
        [(ORIGINAL_DST_LOCAL, f"%FILTER_STATE({ORIGINAL_DST_LOCAL}:PLAIN)%")], "ONCE"
    )
    return {
        "name": "main_internal",
        "internal_listener": {},
        "listener_filters": [_ORIGINAL_DST_FILTER],
        "filter_chains": [
            {
                "filters": [
                    connect_authority,
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm},
                ]
            }
        ],
    }


def _connect_originate_listener() -> Config:
    # The authority restored as the local address becomes the outgoing CONNECT's :authority
    # (facts §2.4 connect_originate). Nothing is shared further from here: the ORIGINAL_DST
    # cluster keys its hosts (and so its pools) by that address alone.
    tcp_proxy = {
        "@type": TCP_PROXY_TYPE,
        "stat_prefix": "connect_originate",
        "cluster": "hbone_upstream",
        "tunneling_config": {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"},
    }
    return {
        "name": "connect_originate",
        "internal_listener": {},
        "listener_filters": [_ORIGINAL_DST_FILTER],
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}]}
        ],
    }


def waypoint_chain(
    listen: Address,
    cert_dir: CertPaths,
    *,
    trust_domain: str = "cluster.local",
    upstream_san_prefix: str | None = None,
    upstream_port: int = HBONE_PORT,
) -> Config:
    """The whole waypoint bootstrap; ``listen`` is normally ``(waypoint_ip, 15008)``.

    ``upstream_san_prefix`` defaults to the trust domain; istiod narrows it to the waypoint's
    namespace (facts §1.2, cluster_waypoint.go L437-449).
    """
    # ONCE, as istiod's ``connect_authority`` HTTP filter (IS:pilot/pkg/xds/filters/filters.go).
    state = set_filter_state(
        [(ORIGINAL_DST_LOCAL, "%REQ(:AUTHORITY)%"), (ORIGINAL_DST_REMOTE, "%DOWNSTREAM_REMOTE_ADDRESS%")],
        "ONCE",
    )
    terminate = connect_terminate_listener(
        "connect_terminate", listen, cert_dir, trust_domain, "main_internal", [state]
    )
    hbone = original_dst_cluster(
        "hbone_upstream",
        original_dst_lb_config={"upstream_port_override": upstream_port},
        transport_socket=upstream_tls(
            cert_dir, {"prefix": upstream_san_prefix or f"spiffe://{trust_domain}/"}
        ),
        typed_extension_protocol_options=http2_upstream_options(),
    )
    return {
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": TYPES + "bootstrap.internal_listener.v3.InternalListener"},
            }
        ],
        "static_resources": {
            "listeners": [terminate, _main_internal_listener(), _connect_originate_listener()],
            "clusters": [
                _internal_cluster("main_internal"),
                _internal_cluster("connect_originate", keep_protocol=True),
                hbone,
            ],
        },
    }
