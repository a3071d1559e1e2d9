"""The bootstrap configuration of the supervised Envoy (a dict; written as JSON).

Model::

    proxy's Envoy ──gRPC (HTTP/2)──▶ supervised Envoy, --grpc-address
                                       grpc_http1_reverse_bridge (withhold_grpc_frames)
                                       router ──HTTP/1.1──▶ unix:<private dir>/bridge.sock
                                                            extauthz (grpcfront.handler)

The listener carries over the bounds the grpc.aio server enforces on the gRPC port
(docs/resources.md "gRPC listener"; the same ``--grpc-*`` flags), each with the reason it is
there; what Envoy cannot express the same way is said next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extauthz.grpcfront.codec import CONTENT_TYPE
from extauthz.netlimits import GrpcLimits

__all__ = ["BRIDGE_CLUSTER", "STAT_PREFIX", "FrontConfig", "bootstrap"]

#: statistics prefix of the gRPC listener's connection manager (``http.grpc_front.*``)
STAT_PREFIX = "grpc_front"
BRIDGE_CLUSTER = "extauthz_bridge"

_TYPE = "type.googleapis.com/envoy.extensions."


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


@dataclass(frozen=True, slots=True)
class FrontConfig:
    """What the bootstrap needs: addresses, bounds, timeouts."""

    #: the gRPC address clients (the proxy's Envoy) connect to
    host: str
    port: int
    #: the Unix socket of the bridged endpoint, and of Envoy's admin interface
    bridge_socket: str
    admin_socket: str
    limits: GrpcLimits
    #: connections Envoy may open to the bridged endpoint (its own connection cap)
    bridge_connections: int = 256
    #: longest a call may take, whatever the client's ``grpc-timeout`` says
    request_timeout: float = 10.0


def _connection_manager(config: FrontConfig) -> dict[str, Any]:
    limits = config.limits
    return {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        # gRPC only: a client speaking HTTP/1.1 here is refused at the first bytes
        "codec_type": "HTTP2",
        # no x-request-id of Envoy's own on the bridged call: extauthz reads the client
        # request's id from the CheckRequest, and generating one costs CPU per call
        "generate_request_id": False,
        # Header block of one call: as grpc.aio's --grpc-max-metadata-bytes.
        "max_request_headers_kb": max(1, limits.max_metadata_bytes // 1024),
        # A stream that makes no progress (its answer never read: window 0) is reset after
        # this; grpc.aio had only the connection age for that. The request timeout bounds it.
        "stream_idle_timeout": _seconds(config.request_timeout),
        "common_http_protocol_options": {
            # A connection with no call for this long is closed (GOAWAY), as
            # --grpc-idle-timeout. Envoy counts a connection that never sent a request as idle
            # too, which also covers a client that never sends the preface (grpc.aio's
            # --grpc-handshake-timeout, which Envoy has no separate setting for).
            "idle_timeout": _seconds(limits.idle_timeout),
            # --grpc-max-connection-age: a connection that piles up stuck streams does not live
            # for ever; Envoy sends GOAWAY and closes after the drain timeout below
            "max_connection_duration": _seconds(limits.max_connection_age),
            "headers_with_underscores_action": "ALLOW",
        },
        # --grpc-connection-age-grace: between GOAWAY and the close, calls may finish
        "drain_timeout": _seconds(limits.connection_age_grace),
        "http2_protocol_options": {
            # SETTINGS_MAX_CONCURRENT_STREAMS, as --grpc-max-concurrent-streams (64): a client
            # cannot pile up more calls on one connection (Envoy, the client, opens another)
            "max_concurrent_streams": limits.max_concurrent_streams,
            # Flow-control windows small enough that a client that does not read its answers
            # pins little memory per stream (Envoy's defaults are 256 MiB per stream); a
            # CheckResponse is a few hundred bytes, a CheckRequest up to the message limit
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "route_config": {
            "name": "bridge",
            "virtual_hosts": [{
                "name": "bridge",
                "domains": ["*"],
                "routes": [{
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": BRIDGE_CLUSTER,
                        # the longest a call may take; a shorter grpc-timeout from the client
                        # (Envoy's ext_authz timeout) wins
                        "timeout": _seconds(config.request_timeout),
                        "max_stream_duration": {
                            "grpc_timeout_header_max": _seconds(config.request_timeout)},
                    },
                }],
            }],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_http1_reverse_bridge",
                "typed_config": {
                    "@type": _TYPE + "filters.http.grpc_http1_reverse_bridge.v3.FilterConfig",
                    "content_type": CONTENT_TYPE,
                    # extauthz reads and writes bare protobuf messages: Envoy strips the
                    # 5-byte gRPC frame header from the call and adds it to the answer
                    "withhold_grpc_frames": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "filters.http.router.v3.Router"},
            },
        ],
    }


def bootstrap(config: FrontConfig) -> dict[str, Any]:
    """The Envoy bootstrap of the gRPC front for ``config``."""
    limits = config.limits
    return {
        # admin on a Unix socket in the private directory: reachable by extauthz only
        "admin": {"address": {"pipe": {"path": config.admin_socket}}},
        # Envoy's process-wide connection cap (it warns at start without one): the same cap
        # as the listener's, the only listener that takes connections from the network
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": _TYPE + "resource_monitors.downstream_connections.v3."
                                 "DownstreamConnectionsConfig",
                "max_active_downstream_connections": limits.max_connections,
            },
        }]},
        "static_resources": {
            "listeners": [{
                "name": "grpc",
                "address": {"socket_address": {"address": config.host,
                                               "port_value": config.port}},
                # bytes buffered per connection before flow control pushes back
                "per_connection_buffer_limit_bytes": 1048576,
                "filter_chains": [{"filters": [
                    {
                        # --grpc-max-connections: beyond the cap a new connection is closed
                        # at once (counted in connection_limit.grpc_front.limited_connections)
                        "name": "envoy.filters.network.connection_limit",
                        "typed_config": {
                            "@type": _TYPE + "filters.network.connection_limit.v3."
                                             "ConnectionLimit",
                            "stat_prefix": STAT_PREFIX,
                            "max_connections": limits.max_connections,
                        },
                    },
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _connection_manager(config),
                    },
                ]}],
            }],
            "clusters": [{
                "name": BRIDGE_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": _TYPE + "upstreams.http.v3.HttpProtocolOptions",
                        # Envoy closes an idle pooled connection before the endpoint's own
                        # idle timeout (60 s) could: a request Envoy sends on a connection the
                        # endpoint is closing at that moment would fail (a failed check)
                        "common_http_protocol_options": {"idle_timeout": "30s"},
                        # HTTP/1.1: one bridged call per connection at a time
                        "explicit_http_config": {"http_protocol_options": {}},
                    },
                },
                "circuit_breakers": {"thresholds": [{
                    # at most what the bridged endpoint accepts (its own cap); calls beyond
                    # wait in Envoy's queue instead of being refused by extauthz
                    "max_connections": config.bridge_connections,
                    "max_pending_requests": 1024,
                    "max_requests": 1024,
                    "max_retries": 0,
                }]},
                "load_assignment": {
                    "cluster_name": BRIDGE_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "pipe": {"path": config.bridge_socket}}}}]}],
                },
            }],
        },
    }
