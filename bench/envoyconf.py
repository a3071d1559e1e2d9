"""The benchmark's Envoy configuration (rendered per run; validated by ``envoy --mode validate``).

One plain-HTTP listener on 127.0.0.1. Every route answers with ``direct_response`` (no upstream),
so what is measured is Envoy, and Envoy + ext_authz, nothing else:

``/envoy-alone/``   ext_authz disabled on the route: the baseline ("Envoy alone")
``/s/<scenario>/``  ext_authz on, ``context_extensions: {route: <scenario>}`` names the route
``/sweep/target/``  ext_authz on, route ``target`` named (scaling sweep)
``/sweep/match/``   ext_authz on, **no** route name: extauthz matches by itself (routes sweep)

Differences from ``deploy/envoy/envoy.yaml``, on purpose:

* no access log (it would cost Envoy CPU on every request, baseline included);
* ``forward_client_cert_details: ALWAYS_FORWARD_ONLY``: the client's ``x-forwarded-client-cert``
  reaches extauthz unchanged. This stands in for what Envoy's ``SANITIZE_SET`` writes on a TLS
  listener (the TLS handshake itself is not extauthz's cost). **Never do this in production.**
* the ``hmac`` route buffers the request body for the check (``with_request_body``);
* the ext_authz timeout is 5 s so overload shows up as latency, not as 403s;
* the ``extauthz`` cluster lists one endpoint per extauthz worker process (``LEAST_REQUEST``
  across them): SO_REUSEPORT would not spread Envoy's long-lived HTTP/2 connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from extauthz.http_authz import SOURCE_HEADER

#: the path Envoy's ``http_service`` puts before the request's (bench.httpauthz strips it)
PATH_PREFIX = "/check"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"

#: extauthz route names that get a ``/s/<name>/`` Envoy route
SCENARIO_ROUTES = ("apikey", "jwt-rs256-warm", "jwt-rs256-new", "jwt-es256-new", "mtls", "hmac",
                   "deny-401", "policy")


def _direct(prefix: str, per_route: dict[str, Any] | None) -> dict[str, Any]:
    route: dict[str, Any] = {
        "match": {"prefix": prefix},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
    }
    if per_route is not None:
        route["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {"@type": PER_ROUTE, **per_route}}
    return route


def _named(name: str, **settings: Any) -> dict[str, Any]:
    return {"check_settings": {"context_extensions": {"route": name}, **settings}}


def render(*, listener_port: int, admin_port: int, extauthz_ports: Sequence[int],
           timeout: str = "5s") -> str:
    """The Envoy configuration as YAML text."""
    routes = [_direct("/envoy-alone/", {"disabled": True})]
    for name in SCENARIO_ROUTES:
        settings: dict[str, Any] = {}
        if name == "hmac":
            settings["with_request_body"] = {"max_request_bytes": 65536,
                                             "allow_partial_message": False,
                                             "pack_as_bytes": True}
        routes.append(_direct(f"/s/{name}/", _named(name, **settings)))
    routes.append(_direct("/sweep/target/", _named("target")))
    routes.append(_direct("/sweep/match/", {"check_settings": {}}))
    routes.append(_direct("/", {"disabled": True}))
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": port}}}} for port in extauthz_ports]
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1",
                                               "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "normalize_path": True,
                        "merge_slashes": True,
                        "path_with_escaped_slashes_action": "REJECT_REQUEST",
                        "forward_client_cert_details": "ALWAYS_FORWARD_ONLY",
                        "route_config": {"name": "bench", "virtual_hosts": [
                            {"name": "bench", "domains": ["*"], "routes": routes}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.ext_authz", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                         "ext_authz.v3.ExtAuthz",
                                "transport_api_version": "V3",
                                "grpc_service": {"envoy_grpc": {"cluster_name": "extauthz"},
                                                 "timeout": timeout},
                                "failure_mode_allow": False,
                                "include_peer_certificate": True,
                            }},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                         "router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "extauthz",
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "lb_policy": "LEAST_REQUEST" if len(extauthz_ports) > 1 else "ROUND_ROBIN",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }},
                "circuit_breakers": {"thresholds": [
                    {"max_requests": 100000, "max_pending_requests": 100000}]},
                "load_assignment": {"cluster_name": "extauthz",
                                    "endpoints": [{"lb_endpoints": endpoints}]},
            }],
        },
    }
    return str(yaml.safe_dump(config, sort_keys=False))


def envoy_http_config(*, listener_port: int, admin_port: int,
                      authz_ports: Sequence[int]) -> str:
    """The benchmark Envoy config with the ext_authz filter switched to ``http_service``
    (deploy/envoy/envoy-http-authz.yaml's settings; one cluster endpoint per worker)."""
    authz_port = authz_ports[0]
    data = yaml.safe_load(render(listener_port=listener_port, admin_port=admin_port,
                                 extauthz_ports=list(authz_ports)))
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for f in hcm["typed_config"]["http_filters"]:
        if f["name"] == "envoy.filters.http.ext_authz":
            cfg = f["typed_config"]
            cfg.pop("grpc_service")
            cfg.pop("include_peer_certificate", None)
            cfg["http_service"] = {
                "server_uri": {"uri": f"http://127.0.0.1:{authz_port}", "cluster": "extauthz",
                               "timeout": "5s"},
                "path_prefix": PATH_PREFIX,
                "authorization_request": {"headers_to_add": [
                    {"key": SOURCE_HEADER, "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]},
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"prefix": "x-auth-"}]},
                    "allowed_client_headers": {"patterns": [
                        {"exact": "www-authenticate"}, {"exact": "content-type"},
                        {"exact": "retry-after"}]},
                },
            }
            cfg["allowed_headers"] = {"patterns": [{"safe_regex": {"regex": ".*"}}]}
            cfg["status_on_error"] = {"code": "ServiceUnavailable"}
    for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
        per = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz")
        if per and "check_settings" in per:
            # context_extensions do not exist in HTTP mode; the body setting does
            per["check_settings"].pop("context_extensions", None)
    cluster = data["static_resources"]["clusters"][0]
    cluster.pop("typed_extension_protocol_options")
    return str(yaml.safe_dump(data, sort_keys=False))
