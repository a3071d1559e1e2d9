"""Two real Envoys for the XFCC trust-model tests: an edge Envoy and an inner Envoy.

::

  client ──TLS──▶ edge Envoy ─────────────────────────────────────────▶ extauthz / echo
                  │ edge_grpc  SANITIZE_SET, ext_authz gRPC *without* the peer certificate
                  │ edge_http  SANITIZE_SET, ext_authz HTTP with %DOWNSTREAM_PEER_CERT%
                  │ edge_http_xfcc  SANITIZE_SET, ext_authz HTTP without it (XFCC only)
                  │ edge_echo  SANITIZE_SET, no ext_authz (shows the XFCC Envoy wrote)
                  │ plain_http plain HTTP, ext_authz HTTP with %DOWNSTREAM_PEER_CERT% (empty)
                  │ plain_unguarded  the same **without** disallowed_headers: a deliberately
                  │            wrong configuration, the negative control for it
                  │ edge_hop   SANITIZE_SET, no ext_authz, upstream over mTLS (the edge proxy's
                  │            own client certificate) to the inner Envoy, by path prefix:
                  ▼              /g/ → inner_grpc, /h/ → inner_http, /e/ → inner_echo
                inner Envoy (each listener requires a client certificate: the edge proxy's)
                  inner_grpc APPEND_FORWARD, ext_authz gRPC *with* include_peer_certificate
                  inner_http APPEND_FORWARD, ext_authz HTTP with %DOWNSTREAM_PEER_CERT%
                  inner_echo APPEND_FORWARD, no ext_authz

Every listener that sets the peer-certificate header keeps a client-sent one away with
``disallowed_headers`` exactly as deploy/envoy/envoy-http-authz.yaml does (Envoy 1.40 sets nothing
when the connection has no certificate). Every TLS listener writes all of
``set_current_client_cert_details`` (subject, cert, chain, dns, uri).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo.envoy import start_envoy
from extauthz.demo.httpclient import Response, request
from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok
from extauthz.http_authz import PEER_CERT_HEADER
from tests.support.envoy_tls import ClientCert, client_context, tls_request
from tests.support.processes import STARTUP_TIMEOUT

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DOWNSTREAM_TLS = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                  "DownstreamTlsContext")
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

EDGE_LISTENERS = ("edge_grpc", "edge_http", "edge_http_xfcc", "edge_echo", "plain_http",
                  "plain_unguarded", "edge_hop")
INNER_LISTENERS = ("inner_grpc", "inner_http", "inner_echo")


def _cluster(name: str, port: int, *, http2: bool = False,
             tls: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": LOOPBACK,
                                                         "port_value": port}}}}]}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                       "typed_config": tls}
    return cluster


def _downstream_tls(cert_dir: Path, *, require: bool) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": require,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(cert_dir / "server.crt")},
                                  "private_key": {"filename": str(cert_dir / "server.key")}}],
            "validation_context": {"trusted_ca": {"filename": str(cert_dir / "ca.crt")}},
        }}}


def _ext_authz(kind: str, *, peer_certificate: bool = True,
               guarded: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": EXT_AUTHZ_TYPE, "transport_api_version": "V3",
                              "failure_mode_allow": False}
    if kind == "grpc":
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": "extauthz_grpc"},
                                  "timeout": "2s"}
        config["include_peer_certificate"] = peer_certificate
    else:
        config["http_service"] = {
            "server_uri": {"uri": f"http://{LOOPBACK}", "cluster": "extauthz_http",
                           "timeout": "2s"},
            "path_prefix": "/check",
            "authorization_request": {"headers_to_add": [
                {"key": PEER_CERT_HEADER, "value": "%DOWNSTREAM_PEER_CERT%"}]
                if peer_certificate else []},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"prefix": "x-auth-"}]},
                "allowed_client_headers": {"patterns": [{"exact": "www-authenticate"},
                                                        {"exact": "content-type"}]},
            },
        }
        config["allowed_headers"] = {"patterns": [{"safe_regex": {"regex": ".*"}}]}
        if guarded:
            config["disallowed_headers"] = {"patterns": [{"exact": PEER_CERT_HEADER}]}
        config["status_on_error"] = {"code": "ServiceUnavailable"}
    return {"name": "envoy.filters.http.ext_authz", "typed_config": config}


def _listener(name: str, port: int, *, mode: str, tls: dict[str, Any] | None,
              authz: dict[str, Any] | None, routes: list[dict[str, Any]]) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM_TYPE, "stat_prefix": name, "forward_client_cert_details": mode,
        "route_config": {"name": name, "virtual_hosts": [
            {"name": name, "domains": ["*"], "routes": routes}]},
        "http_filters": ([authz] if authz else [])
        + [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    if mode in ("SANITIZE_SET", "APPEND_FORWARD"):
        hcm["set_current_client_cert_details"] = {"subject": True, "cert": True, "chain": True,
                                                  "dns": True, "uri": True}
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": hcm}]}
    if tls is not None:
        chain["transport_socket"] = tls
    return {"name": name,
            "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
            "filter_chains": [chain]}


def _to(cluster: str, prefix: str = "/") -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


def inner_config(cert_dir: Path, ports: dict[str, int], admin: int, *, grpc_port: int,
                 http_port: int, echo_port: int) -> str:
    """The inner Envoy: APPEND_FORWARD listeners that require the edge proxy's certificate."""
    listeners = [
        _listener("inner_grpc", ports["inner_grpc"], mode="APPEND_FORWARD",
                  tls=_downstream_tls(cert_dir, require=True),
                  authz=_ext_authz("grpc", peer_certificate=True), routes=[_to("echo")]),
        _listener("inner_http", ports["inner_http"], mode="APPEND_FORWARD",
                  tls=_downstream_tls(cert_dir, require=True),
                  authz=_ext_authz("http"), routes=[_to("echo")]),
        _listener("inner_echo", ports["inner_echo"], mode="APPEND_FORWARD",
                  tls=_downstream_tls(cert_dir, require=True), authz=None, routes=[_to("echo")]),
    ]
    return _render(admin, listeners, [
        _cluster("extauthz_grpc", grpc_port, http2=True),
        _cluster("extauthz_http", http_port),
        _cluster("echo", echo_port),
    ])


def edge_config(cert_dir: Path, ports: dict[str, int], admin: int, *, grpc_port: int,
                http_port: int, echo_port: int, inner_ports: dict[str, int]) -> str:
    """The edge Envoy (module docstring); ``inner_ports`` are the inner Envoy's listeners."""
    upstream_tls = {
        "@type": UPSTREAM_TLS, "sni": "localhost",
        "common_tls_context": {
            "tls_certificates": [{
                "certificate_chain": {"filename": str(cert_dir / "edgeproxy.crt")},
                "private_key": {"filename": str(cert_dir / "edgeproxy.key")}}],
            "validation_context": {"trusted_ca": {"filename": str(cert_dir / "ca.crt")}},
        }}
    listeners = [
        _listener("edge_grpc", ports["edge_grpc"], mode="SANITIZE_SET",
                  tls=_downstream_tls(cert_dir, require=False),
                  authz=_ext_authz("grpc", peer_certificate=False), routes=[_to("echo")]),
        _listener("edge_http", ports["edge_http"], mode="SANITIZE_SET",
                  tls=_downstream_tls(cert_dir, require=False),
                  authz=_ext_authz("http"), routes=[_to("echo")]),
        _listener("edge_http_xfcc", ports["edge_http_xfcc"], mode="SANITIZE_SET",
                  tls=_downstream_tls(cert_dir, require=False),
                  authz=_ext_authz("http", peer_certificate=False), routes=[_to("echo")]),
        _listener("edge_echo", ports["edge_echo"], mode="SANITIZE_SET",
                  tls=_downstream_tls(cert_dir, require=False), authz=None, routes=[_to("echo")]),
        _listener("plain_http", ports["plain_http"], mode="SANITIZE", tls=None,
                  authz=_ext_authz("http"), routes=[_to("echo")]),
        _listener("plain_unguarded", ports["plain_unguarded"], mode="SANITIZE", tls=None,
                  authz=_ext_authz("http", guarded=False), routes=[_to("echo")]),
        _listener("edge_hop", ports["edge_hop"], mode="SANITIZE_SET",
                  tls=_downstream_tls(cert_dir, require=True), authz=None,
                  routes=[_to("inner_grpc", "/g/"), _to("inner_http", "/h/"),
                          _to("inner_echo", "/e/")]),
    ]
    return _render(admin, listeners, [
        _cluster("extauthz_grpc", grpc_port, http2=True),
        _cluster("extauthz_http", http_port),
        _cluster("echo", echo_port),
        *(_cluster(name, inner_ports[name], tls=upstream_tls) for name in INNER_LISTENERS),
    ])


def _render(admin: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> str:
    data = {"admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}
    return str(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Topology:
    """extauthz (both transports) + the inner and edge Envoys, running."""

    ports: dict[str, int]
    processes: list[ManagedProcess]
    ca_file: Path

    def tls(self, listener: str, path: str, client: ClientCert | None,
            headers: dict[str, str] | None = None) -> Response:
        """``GET path`` over TLS to ``listener``, presenting ``client``'s certificate (if any)."""
        context = client_context(self.ca_file, client)
        return tls_request(self.ports[listener], "GET", path, headers, context=context,
                           timeout=10.0)

    def plain(self, listener: str, path: str, headers: dict[str, str]) -> Response:
        """``GET path`` over plain HTTP to ``listener``."""
        return request("GET", f"http://{LOOPBACK}:{self.ports[listener]}{path}", headers,
                       timeout=10.0)

    def stop(self) -> None:
        """Stop everything started, nearest the client first."""
        for proc in reversed(self.processes):
            proc.stop()


def start_topology(config: Path, *, echo_port: int, logs: Path, cert_dir: Path,
                   extra_args: Sequence[str] = ()) -> Topology:
    """Start extauthz (gRPC + HTTP transport reading :data:`PEER_CERT_HEADER`; ``extra_args``:
    more serve flags, e.g. ``--grpc-server envoy``), the inner Envoy, then the edge Envoy.
    ``cert_dir`` holds ca.crt, server.crt/key and edgeproxy.crt/key."""
    logs.mkdir(parents=True, exist_ok=True)
    names = (*EDGE_LISTENERS, *INNER_LISTENERS)
    grpc_port, http_port, authz_http, edge_admin, inner_admin, *rest = free_ports(5 + len(names))
    ports = dict(zip(names, rest, strict=True))
    argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{http_port}"),
            "--http-authz-address", f"{LOOPBACK}:{authz_http}",
            "--http-authz-peer-cert-header", PEER_CERT_HEADER, *extra_args]
    running = Topology(ports, [], cert_dir / "ca.crt")
    try:
        extauthz = ManagedProcess("extauthz", argv, logs / "extauthz.log").start()
        running.processes.append(extauthz)
        extauthz.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), STARTUP_TIMEOUT)
        inner_yaml = logs / "inner.yaml"
        inner_yaml.write_text(inner_config(cert_dir, ports, inner_admin, grpc_port=grpc_port,
                                           http_port=authz_http, echo_port=echo_port))
        running.processes.append(start_envoy(inner_yaml, admin_port=inner_admin,
                                             log_path=logs / "inner-envoy.log",
                                             timeout=STARTUP_TIMEOUT))
        edge_yaml = logs / "edge.yaml"
        edge_yaml.write_text(edge_config(cert_dir, ports, edge_admin, grpc_port=grpc_port,
                                         http_port=authz_http, echo_port=echo_port,
                                         inner_ports=ports))
        running.processes.append(start_envoy(edge_yaml, admin_port=edge_admin,
                                             log_path=logs / "edge-envoy.log",
                                             timeout=STARTUP_TIMEOUT))
    except BaseException:
        running.stop()
        raise
    return running
