"""Envoy with TLS listeners for the mTLS end-to-end tests, and a client-certificate HTTP client.

The Envoy configuration is ``deploy/envoy/envoy-mtls.yaml`` itself (so the file the docs show is
the file the tests run) with, for a test:

* its four well-known ports (listener 10443, admin 19901, extauthz 9001, upstream 18080) and its
  three certificate paths (``certs/server.crt``, ``certs/server.key``, ``certs/client-ca.crt``)
  replaced;
* the test's routes put in front of the deploy file's own routes, on every listener;
* four more listeners, derived from the deploy file's listener (same HTTP connection manager,
  ext_authz filter and routes), each changing exactly one thing:

  ``permissive``   TLS, a client certificate is *requested* but not required, and Envoy accepts
                   certificates that fail its verification (``trust_chain_verification:
                   ACCEPT_UNTRUSTED``). Expired, foreign-CA or certificate-less clients reach
                   extauthz, which must refuse them on its own (defence in depth).
  ``xfcc``         like ``permissive`` but ext_authz without ``include_peer_certificate``:
                   extauthz sees the client certificate only in the ``x-forwarded-client-cert``
                   header Envoy wrote (``SANITIZE_SET``), as it would behind a sanitizing proxy.
  ``plain``        plain HTTP with ``forward_client_cert_details: SANITIZE`` (as in
                   deploy/envoy/envoy.yaml): a client-sent XFCC header is removed.
  ``forward_only`` plain HTTP with ``FORWARD_ONLY``. Envoy 1.40 still removes a client-sent XFCC
                   here: FORWARD_ONLY and APPEND_FORWARD forward it only on connections that
                   presented a client certificate.
  ``unsanitized``  plain HTTP with ``ALWAYS_FORWARD_ONLY``: a **deliberately wrong** configuration
                   that forwards a client-sent XFCC header on any connection. Only there to show
                   that a forged header the ``plain`` listener drops would otherwise have been
                   accepted.

:func:`tls_request` is the client: :mod:`http.client` over an :class:`ssl.SSLContext` that trusts
the test CA and presents a client certificate (``load_cert_chain``), or none.
"""

from __future__ import annotations

import copy
import http.client
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo.envoy import REPO_ROOT, EnvoyPorts, render_config
from extauthz.demo.httpclient import Response, request
from extauthz.demo.procs import LOOPBACK, free_ports
from tests.support.processes import GRPC_SERVER_ARGS, STARTUP_TIMEOUT, Stack, start_pair

#: The documented mTLS Envoy configuration the tests run.
MTLS_ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy-mtls.yaml"
#: Its well-known ports (replaced by free ones for a test).
MTLS_DEFAULT_PORTS = EnvoyPorts(listener=10443, admin=19901, extauthz=9001, echo=18080)
#: Its certificate paths (relative to Envoy's working directory) -> the file names a test writes.
CERT_PATHS = {
    "certs/server.crt": "server.crt",
    "certs/server.key": "server.key",
    "certs/client-ca.crt": "client-ca.crt",
}
#: The TLS server name Envoy's certificate is issued for (the tests connect to 127.0.0.1).
SERVER_NAME = "localhost"
#: The extra listeners (see the module docstring), in the order their ports are allocated.
EXTRA_LISTENERS = ("permissive", "xfcc", "plain", "forward_only", "unsanitized")

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"


# -- the Envoy configuration ---------------------------------------------------------------------


def _walk(node: Any) -> Iterable[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == HCM]
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def _ext_authz(listener: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [f for f in _hcm(listener)["http_filters"] if f["name"] == EXT_AUTHZ]
    typed: dict[str, Any] = entry["typed_config"]
    return typed


def _tls_context(listener: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    return typed


def ext_authz_route(prefix: str, route: str) -> dict[str, Any]:
    """An Envoy route: ``prefix`` to the upstream, checked as extauthz route ``route``."""
    return {
        "match": {"prefix": prefix},
        "route": {"cluster": "echo"},
        "typed_per_filter_config": {
            EXT_AUTHZ: {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": {"route": route}},
            }
        },
    }


def render_mtls_config(
    ports: EnvoyPorts,
    listeners: Mapping[str, int],
    cert_dir: Path,
    routes: Sequence[Mapping[str, Any]] = (),
    *,
    source: Path = MTLS_ENVOY_CONFIG,
) -> str:
    """``source`` for a test (module docstring): ports, certificate paths, routes, listeners.

    ``listeners`` maps each name in :data:`EXTRA_LISTENERS` to its port. Raises ValueError when
    the source lacks a port or certificate path to replace (a silent no-op would test something
    else than the file claims).
    """
    data = yaml.safe_load(render_config(ports, source, default_ports=MTLS_DEFAULT_PORTS))
    seen: set[str] = set()
    for node in _walk(data):
        if isinstance(node, dict) and node.get("filename") in CERT_PATHS:
            seen.add(node["filename"])
            node["filename"] = str(cert_dir / CERT_PATHS[node["filename"]])
    missing = sorted(set(CERT_PATHS) - seen)
    if missing:
        raise ValueError(f"{source}: no certificate file(s) {missing} to substitute")
    (base,) = data["static_resources"]["listeners"]
    (vhost,) = _hcm(base)["route_config"]["virtual_hosts"]
    vhost["routes"] = [dict(r) for r in routes] + vhost["routes"]
    out = [base]
    for name in EXTRA_LISTENERS:
        out.append(_derived_listener(base, name, listeners[name]))
    data["static_resources"]["listeners"] = out
    return str(yaml.safe_dump(data, sort_keys=False))


_PLAIN_XFCC_MODES = {
    "plain": "SANITIZE",
    "forward_only": "FORWARD_ONLY",
    "unsanitized": "ALWAYS_FORWARD_ONLY",
}


def _derived_listener(base: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    listener = copy.deepcopy(base)
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = _hcm(listener)
    hcm["stat_prefix"] = name
    if name in ("permissive", "xfcc"):
        tls = _tls_context(listener)
        tls["require_client_certificate"] = False
        tls["common_tls_context"]["validation_context"]["trust_chain_verification"] = (
            "ACCEPT_UNTRUSTED"
        )
        if name == "xfcc":
            _ext_authz(listener)["include_peer_certificate"] = False
    elif name in _PLAIN_XFCC_MODES:
        del listener["filter_chains"][0]["transport_socket"]
        hcm.pop("set_current_client_cert_details", None)
        hcm["forward_client_cert_details"] = _PLAIN_XFCC_MODES[name]
    else:
        raise ValueError(f"unknown listener {name!r}")
    return listener


# -- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCert:
    """A client certificate as files: ``cert`` may hold the leaf followed by intermediates."""

    name: str
    cert: Path
    key: Path


class _TlsConnection(http.client.HTTPConnection):
    """HTTP over TLS to ``host:port`` with SNI / hostname check against ``server_name``."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def client_context(
    ca_file: Path, client: ClientCert | None = None, *, max_tls: str | None = None
) -> ssl.SSLContext:
    """A context trusting ``ca_file`` for the server, presenting ``client`` (if any)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    if max_tls == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    context: ssl.SSLContext,
    body: bytes | None = None,
    host: str = LOOPBACK,
    server_name: str = SERVER_NAME,
    timeout: float = 5.0,
) -> Response:
    """One request on a fresh TLS connection; the whole response (raises on a TLS failure)."""
    conn = _TlsConnection(host, port, context, server_name, timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(
            status=resp.status,
            headers=tuple((k.lower(), v) for k, v in resp.getheaders()),
            body=data,
        )
    finally:
        conn.close()


# -- the stack -----------------------------------------------------------------------------------


@dataclass
class TlsStack(Stack):
    """A :class:`Stack` whose Envoy runs :func:`render_mtls_config`.

    ``ports.listener`` is the deploy file's (strict) mTLS listener; ``listeners`` has the others.
    ``Stack.get``/``request`` are not meaningful here: use :meth:`tls` and :meth:`plain`.
    """

    listeners: dict[str, int] = field(default_factory=dict)
    ca_file: Path = Path()

    def port(self, listener: str) -> int:
        return self.ports.listener if listener == "mtls" else self.listeners[listener]

    def tls(
        self,
        path: str,
        client: ClientCert | None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        listener: str = "mtls",
        method: str = "GET",
        max_tls: str | None = None,
    ) -> Response:
        """``method path`` over TLS to ``listener``, presenting ``client``'s certificate."""
        context = client_context(self.ca_file, client, max_tls=max_tls)
        return tls_request(self.port(listener), method, path, headers, context=context)

    def plain(
        self,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        listener: str = "plain",
        method: str = "GET",
    ) -> Response:
        """``method path`` over plain HTTP to ``listener`` (one of the plain-HTTP listeners)."""
        return request(method, f"http://{LOOPBACK}:{self.port(listener)}{path}", headers)


def start_tls_stack(
    config: Path,
    *,
    echo_port: int,
    log_dir: Path,
    cert_dir: Path,
    routes: Sequence[Mapping[str, Any]] = (),
    timeout: float = STARTUP_TIMEOUT,
    transport: str = "grpc",
) -> TlsStack:
    """Start extauthz with ``config`` and Envoy with :func:`render_mtls_config`; wait for both.
    ``transport``: how extauthz serves gRPC (``grpc`` or ``grpc-envoy``: GRPC_SERVER_ARGS).

    ``cert_dir`` must hold ``server.crt``, ``server.key`` and ``client-ca.crt``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, grpc_port, http_port, *extra = free_ports(4 + len(EXTRA_LISTENERS))
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=grpc_port, echo=echo_port)
    listeners = dict(zip(EXTRA_LISTENERS, extra, strict=True))
    envoy_config = log_dir / "envoy-mtls.yaml"
    envoy_config.write_text(render_mtls_config(ports, listeners, cert_dir, routes))
    extauthz_args = GRPC_SERVER_ARGS[transport]
    extauthz, envoy = start_pair(config, envoy_config, ports, http_port, log_dir, timeout,
                                 extauthz_args=extauthz_args)
    return TlsStack(
        config=config,
        ports=ports,
        http_port=http_port,
        log_dir=log_dir,
        extauthz=extauthz,
        envoy=envoy,
        envoy_config=envoy_config,
        timeout=timeout,
        extauthz_args=extauthz_args,
        listeners=listeners,
        ca_file=cert_dir / "client-ca.crt",
    )
