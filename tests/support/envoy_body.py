"""Envoy with ``with_request_body`` for the end-to-end tests of signed requests, and a client that
controls the bytes it sends (``Host``, repeated headers, chunked bodies).

The Envoy configuration is ``deploy/envoy/envoy-body.yaml`` itself (so the file the docs show is the
file the tests run) with, for a test:

* its four well-known ports (listener 10000, admin 19901, extauthz 9001, upstream 18080) replaced
  by free ones;
* the test's routes put in front of the deploy file's own routes;
* a second listener ``raw``, identical except that its ext_authz filter has
  ``encode_raw_headers: true`` (extauthz then reads ``header_map`` with ``raw_value`` bytes
  instead of the ``headers`` map: both encodings must give the same signature base).

:func:`start_env_stack` also starts extauthz with extra environment variables (secrets given as
``secret_env`` / ``client_secret_env``); :func:`start_stack` cannot pass any.
"""

from __future__ import annotations

import copy
import http.client
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo.envoy import REPO_ROOT, EnvoyPorts, render_config, start_envoy
from extauthz.demo.httpclient import Response
from extauthz.demo.procs import (
    LOOPBACK,
    ManagedProcess,
    extauthz_argv,
    free_ports,
    http_ok,
    start_extauthz,
)
from tests.support.processes import STARTUP_TIMEOUT, Stack, start_pair

#: The documented body-buffering Envoy configuration the tests run.
BODY_ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy-body.yaml"
#: The documented HTTP ext_authz transport configuration.
HTTP_ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy-http-authz.yaml"
#: Its ``with_request_body.max_request_bytes``.
MAX_REQUEST_BYTES = 8192

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == HCM]
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def ext_authz_filter(listener: dict[str, Any]) -> dict[str, Any]:
    """The ``typed_config`` of ``listener``'s ext_authz filter."""
    (entry,) = [f for f in _hcm(listener)["http_filters"] if f["name"] == EXT_AUTHZ]
    typed: dict[str, Any] = entry["typed_config"]
    return typed


def body_route(
    prefix: str,
    route: str,
    *,
    with_request_body: Mapping[str, Any] | None = None,
    cluster: str = "upstream",
) -> dict[str, Any]:
    """An Envoy route: ``prefix`` to ``cluster``, checked as extauthz route ``route``;
    ``with_request_body`` overrides the filter's buffer settings for this route only."""
    check_settings: dict[str, Any] = {"context_extensions": {"route": route}}
    if with_request_body is not None:
        check_settings["with_request_body"] = dict(with_request_body)
    return {
        "match": {"prefix": prefix},
        "route": {"cluster": cluster},
        "typed_per_filter_config": {
            EXT_AUTHZ: {"@type": PER_ROUTE, "check_settings": check_settings}
        },
    }


def render_body_config(
    ports: EnvoyPorts,
    raw_port: int,
    routes: Sequence[Mapping[str, Any]] = (),
    *,
    source: Path = BODY_ENVOY_CONFIG,
) -> str:
    """``source`` for a test (see the module docstring): ports, routes, the ``raw`` listener."""
    data = yaml.safe_load(render_config(ports, source))
    (base,) = data["static_resources"]["listeners"]
    (vhost,) = _hcm(base)["route_config"]["virtual_hosts"]
    vhost["routes"] = [dict(r) for r in routes] + vhost["routes"]
    raw = copy.deepcopy(base)
    raw["name"] = "raw"
    raw["address"]["socket_address"]["port_value"] = raw_port
    _hcm(raw)["stat_prefix"] = "raw"
    ext_authz_filter(raw)["encode_raw_headers"] = True
    data["static_resources"]["listeners"] = [base, raw]
    return str(yaml.safe_dump(data, sort_keys=False))


def send(
    port: int,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    host: str | None = None,
    chunk_size: int | None = None,
    timeout: float = 5.0,
) -> Response:
    """One HTTP/1.1 request written exactly as given, on a fresh connection.

    ``host``: the Host header (default ``127.0.0.1:<port>``). ``chunk_size``: send the body with
    ``Transfer-Encoding: chunked`` in chunks of this size (no Content-Length), else with
    Content-Length. Repeated names in ``headers`` are sent as separate lines.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"{LOOPBACK}:{port}")
        for name, value in headers:
            conn.putheader(name, value)
        if body is None:
            conn.endheaders()
        elif chunk_size is None:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for start in range(0, len(body), chunk_size):
                chunk = body[start : start + chunk_size]
                conn.send(f"{len(chunk):x}\r\n".encode("ascii") + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        data = resp.read()
        return Response(
            status=resp.status,
            headers=tuple((k.lower(), v) for k, v in resp.getheaders()),
            body=data,
        )
    finally:
        conn.close()


@dataclass
class BodyStack(Stack):
    """A :class:`Stack` whose Envoy runs :func:`render_body_config`.

    ``ports.listener`` is the deploy file's listener (``headers`` map encoding); ``raw_port`` the
    ``encode_raw_headers: true`` copy. ``env``: the extra environment extauthz runs with.
    """

    raw_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def authority(self) -> str:
        """What the client's Host header says for the main listener."""
        return f"{LOOPBACK}:{self.ports.listener}"

    def port(self, listener: str = "main") -> int:
        return self.raw_port if listener == "raw" else self.ports.listener

    def send(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        listener: str = "main",
        host: str | None = None,
        chunk_size: int | None = None,
    ) -> Response:
        """:func:`send` to ``listener`` (``main`` or ``raw``)."""
        return send(
            self.port(listener), method, target, headers, body, host=host, chunk_size=chunk_size
        )

    def start_extauthz(self) -> None:
        """(Re)start extauthz on the same ports, with the same environment."""
        self.extauthz.stop()
        self.extauthz = start_extauthz(
            self.config,
            grpc_port=self.ports.extauthz,
            http_port=self.http_port,
            log_path=self.log_dir / "extauthz.log",
            timeout=self.timeout,
            env={**os.environ, **self.env},
        )


def start_env_stack(
    config: Path,
    *,
    echo_port: int,
    log_dir: Path,
    routes: Sequence[Mapping[str, Any]] = (),
    env: Mapping[str, str] | None = None,
    source: Path = BODY_ENVOY_CONFIG,
    timeout: float = STARTUP_TIMEOUT,
) -> BodyStack:
    """Start extauthz (with ``env`` added to this process's environment) and Envoy running
    :func:`render_body_config` of ``source``; wait for both. ``source`` may be any Envoy config
    with the four well-known ports and one listener (e.g. ``deploy/envoy/envoy.yaml``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, grpc_port, http_port, raw_port = free_ports(5)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=grpc_port, echo=echo_port)
    envoy_config = log_dir / "envoy-body.yaml"
    envoy_config.write_text(render_body_config(ports, raw_port, routes, source=source))
    extra = dict(env or {})
    extauthz, envoy = start_pair(
        config, envoy_config, ports, http_port, log_dir, timeout, env={**os.environ, **extra}
    )
    return BodyStack(
        config=config,
        ports=ports,
        http_port=http_port,
        log_dir=log_dir,
        extauthz=extauthz,
        envoy=envoy,
        envoy_config=envoy_config,
        timeout=timeout,
        raw_port=raw_port,
        env=extra,
    )


def start_http_stack(
    config: Path,
    *,
    echo_port: int,
    log_dir: Path,
    routes: Sequence[Mapping[str, Any]] = (),
    body: bool = True,
    timeout: float = STARTUP_TIMEOUT,
) -> BodyStack:
    """extauthz serving Envoy's HTTP ext_authz protocol (``--http-authz-address``) behind
    deploy/envoy/envoy-http-authz.yaml on free ports, ``routes`` in front of its own, and without
    its ``with_request_body`` unless ``body``. ``raw_port`` is the main listener (no raw copy)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, authz, grpc_port, http_port = free_ports(5)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=authz, echo=echo_port)
    data = yaml.safe_load(render_config(ports, HTTP_ENVOY_CONFIG))
    (base,) = data["static_resources"]["listeners"]
    (vhost,) = _hcm(base)["route_config"]["virtual_hosts"]
    vhost["routes"] = [dict(r) for r in routes] + vhost["routes"]
    if not body:
        del ext_authz_filter(base)["with_request_body"]
    envoy_config = log_dir / "envoy-http.yaml"
    envoy_config.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{http_port}"),
            "--http-authz-address", f"{LOOPBACK}:{authz}"]
    extauthz = ManagedProcess("extauthz", argv, log_dir / "extauthz.log").start()
    try:
        extauthz.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), timeout)
        envoy = start_envoy(envoy_config, admin_port=admin, log_path=log_dir / "envoy.log",
                            timeout=timeout)
    except BaseException:
        extauthz.stop()
        raise
    return BodyStack(config=config, ports=ports, http_port=http_port, log_dir=log_dir,
                     extauthz=extauthz, envoy=envoy, envoy_config=envoy_config,
                     timeout=timeout, raw_port=listener)
