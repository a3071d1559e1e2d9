"""An extauthz + Envoy pair on any transport: ``grpc`` (deploy/envoy/envoy.yaml), ``grpc-envoy``
(the same Envoy file, its ext_authz gRPC cluster pointed at the gRPC front extauthz supervises:
``serve --grpc-server envoy``) or ``http``
(deploy/envoy/envoy-http-authz.yaml with ``serve --http-authz-address``, and
``--http-authz-source-header`` for the client-address header that file makes Envoy set, so
``source`` rules and Basic's per-address limit work as documented).

For tests that must prove one behaviour over both ext_authz protocols. ``envoy_edit`` may change
the rendered Envoy configuration (a dict) before it is written, e.g. to add tracing; ``env``
replaces extauthz's environment (e.g. ``OTEL_*`` variables); ``source`` replaces the shipped Envoy
file (a variant of it); ``extra_args`` are more ``serve`` flags. On the ``http`` transport extauthz
also serves gRPC, on ``stack._extra["grpc_port"]`` (in-process checks of the same server).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo.envoy import ENVOY_CONFIG, EnvoyPorts, render_config, start_envoy
from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok
from extauthz.http_authz import SOURCE_HEADER
from tests.support.processes import GRPC_SERVER_ARGS, STARTUP_TIMEOUT, Stack

ENVOY_HTTP_CONFIG = ENVOY_CONFIG.parent / "envoy-http-authz.yaml"
TRANSPORTS = ("grpc", "http")
#: the ways to serve the gRPC API: grpc.aio, the supervised Envoy front, the built-in HTTP/2
#: server (``serve --grpc-server native``, extauthz.h2grpc)
GRPC_TRANSPORTS = ("grpc", "grpc-envoy", "grpc-native")


def start_transport_stack(
    transport: str,
    config: Path,
    *,
    upstream_port: int,
    log_dir: Path,
    envoy_edit: Callable[[dict[str, Any]], None] | None = None,
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Stack:
    """Start extauthz (serving ``transport``) and Envoy in front of ``upstream_port``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, authz, grpc_port, http_port = free_ports(5)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=authz, echo=upstream_port)
    if source is None:
        source = ENVOY_HTTP_CONFIG if transport == "http" else ENVOY_CONFIG
    rendered = yaml.safe_load(render_config(ports, source))
    if envoy_edit is not None:
        envoy_edit(rendered)
    envoy_config = log_dir / "envoy.yaml"
    envoy_config.write_text(yaml.safe_dump(rendered, sort_keys=False))
    if transport in GRPC_SERVER_ARGS:  # the proxy's ext_authz gRPC cluster points at it
        argv = [*extauthz_argv(config, f"{LOOPBACK}:{authz}", f"{LOOPBACK}:{http_port}"),
                *GRPC_SERVER_ARGS[transport]]
    else:
        argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{http_port}"),
                "--http-authz-address", f"{LOOPBACK}:{authz}",
                "--http-authz-source-header", SOURCE_HEADER]
    argv = [*argv, *extra_args]
    extauthz = ManagedProcess("extauthz", argv, log_dir / "extauthz.log",
                              env=dict(os.environ) | dict(env or {})).start()
    try:
        extauthz.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), STARTUP_TIMEOUT)
        envoy = start_envoy(envoy_config, admin_port=admin, log_path=log_dir / "envoy.log",
                            timeout=STARTUP_TIMEOUT)
    except BaseException:
        extauthz.stop()
        raise
    stack = Stack(config=config, ports=ports, http_port=http_port, log_dir=log_dir,
                  extauthz=extauthz, envoy=envoy, envoy_config=envoy_config,
                  extauthz_args=(*GRPC_SERVER_ARGS.get(transport, ()), *extra_args))
    if transport == "http":
        stack._extra["grpc_port"] = grpc_port
    return stack
