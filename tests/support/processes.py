"""Process harness for the end-to-end tests: an extauthz + Envoy pair on free ports.

The building blocks (ports, :class:`ManagedProcess`, readiness, stop by PID) live in
:mod:`extauthz.demo.procs` because the demo uses them too; this module re-exports them and adds
what only tests need: rendering the demo policies for a test IdP, and :class:`Stack`.

Typical use (what ``tests/e2e/conftest.py`` does once per module)::

    config = render_policies(tmp / "policies", issuer=idp.issuer)
    stack = start_stack(config, echo_port=echo.port, log_dir=tmp)
    r = stack.get("/reports/q1", {"x-api-key": DEMO_API_KEY})
    assert r.status == 200 and r.json()["headers"]["x-auth-subject"] == "demo-client"
    stack.stop()
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo import DEMO_ISSUER
from extauthz.demo.envoy import REPO_ROOT
from extauthz.demo.httpclient import Response, request
from extauthz.demo.procs import (
    LOOPBACK,
    ManagedProcess,
    PortInUse,
    ProcessError,
    free_port,
    free_ports,
    http_ok,
    http_status,
    port_in_use,
    start_extauthz,
    tcp_open,
)
from tests.support.envoy import EnvoyPorts, start_envoy, write_envoy_config

__all__ = [
    "GRPC_SERVER_ARGS",
    "LOOPBACK",
    "POLICIES",
    "ManagedProcess",
    "PortInUse",
    "ProcessError",
    "Stack",
    "free_port",
    "free_ports",
    "http_ok",
    "http_status",
    "port_in_use",
    "render_policies",
    "start_extauthz",
    "start_pair",
    "start_stack",
    "tcp_open",
    "write_config",
]

#: The demo/test configuration directory (policies/extauthz.yaml + routes.d/).
POLICIES = REPO_ROOT / "policies"
#: How long a child may take to become ready before the fixture fails (with its log).
STARTUP_TIMEOUT = 20.0
#: the gRPC transports and the ``serve`` flags that select them: ``grpc`` (grpc.aio in
#: extauthz), ``grpc-envoy`` (the supervised Envoy front, docs/grpc-front.md) and
#: ``grpc-native`` (the built-in HTTP/2 server, docs/grpc-native.md)
GRPC_SERVER_ARGS: dict[str, tuple[str, ...]] = {
    "grpc": ("--grpc-server", "grpcio"),
    "grpc-envoy": ("--grpc-server", "envoy"),
    "grpc-native": ("--grpc-server", "native"),
}


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """Write an extauthz configuration dict as YAML; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def render_policies(
    dest: Path,
    *,
    issuer: str,
    jwt_overrides: Mapping[str, Any] | None = None,
    source: Path = POLICIES,
) -> Path:
    """Copy ``policies/`` to ``dest`` with the demo IdP's issuer replaced by ``issuer``.

    ``jwt_overrides`` updates the ``demo-idp`` JWT authenticator (e.g. short
    ``max_stale_seconds``). Returns the path of the rendered main file.
    """
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    for file in [dest / "extauthz.yaml", *sorted((dest / "routes.d").glob("*.y*ml"))]:
        file.write_text(file.read_text().replace(DEMO_ISSUER, issuer))
    main = dest / "extauthz.yaml"
    if jwt_overrides:
        data = yaml.safe_load(main.read_text())
        data["authenticators"]["demo-idp"]["jwt"].update(jwt_overrides)
        write_config(main, data)
    return main


@dataclass
class Stack:
    """A running extauthz + Envoy pair and how to reach it."""

    config: Path
    ports: EnvoyPorts
    http_port: int  # extauthz admin HTTP (/metrics, /readyz)
    log_dir: Path
    extauthz: ManagedProcess
    envoy: ManagedProcess
    envoy_config: Path
    timeout: float = STARTUP_TIMEOUT
    _extra: dict[str, Any] = field(default_factory=dict)
    #: more ``serve`` flags (kept for :meth:`start_extauthz`), e.g. ``--grpc-server envoy``
    extauthz_args: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """Envoy's listener: where clients send requests."""
        return f"http://{LOOPBACK}:{self.ports.listener}"

    @property
    def admin_url(self) -> str:
        """Envoy's admin interface."""
        return f"http://{LOOPBACK}:{self.ports.admin}"

    @property
    def extauthz_url(self) -> str:
        """extauthz's HTTP endpoint (/metrics, /healthz, /readyz)."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout: float = 5.0,
    ) -> Response:
        """Send a request through Envoy."""
        return request(method, self.url(path), headers, body, timeout)

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float = 5.0,
    ) -> Response:
        return self.request("GET", path, headers, timeout=timeout)

    def metrics(self) -> str:
        return request("GET", self.extauthz_url + "/metrics").text

    # -- lifecycle -------------------------------------------------------------------------

    def stop_extauthz(self, timeout: float = 5.0) -> None:
        self.extauthz.stop(timeout)

    def start_extauthz(self) -> None:
        """(Re)start extauthz on the same ports and wait until ready."""
        self.extauthz.stop()
        self.extauthz = start_extauthz(
            self.config,
            grpc_port=self.ports.extauthz,
            http_port=self.http_port,
            log_path=self.log_dir / "extauthz.log",
            timeout=self.timeout,
            extra_args=self.extauthz_args,
        )

    def stop(self) -> None:
        """Stop Envoy, then extauthz (by PID, bounded waits). Idempotent."""
        self.envoy.stop()
        self.extauthz.stop()

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(p.log_tail(lines) for p in (self.extauthz, self.envoy))


def start_pair(
    config: Path,
    envoy_config: Path,
    ports: EnvoyPorts,
    http_port: int,
    log_dir: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    extauthz_args: Sequence[str] = (),
) -> tuple[ManagedProcess, ManagedProcess]:
    """Start extauthz, then Envoy, each waited ready; logs go to ``log_dir``.

    extauthz comes first so Envoy's first checks find it; if Envoy fails to start, extauthz is
    stopped before the error propagates (no orphan process holds the ports).
    """
    extauthz = start_extauthz(
        config,
        grpc_port=ports.extauthz,
        http_port=http_port,
        log_path=log_dir / "extauthz.log",
        timeout=timeout,
        env=env,
        extra_args=extauthz_args,
    )
    try:
        envoy = start_envoy(
            envoy_config, admin_port=ports.admin, log_path=log_dir / "envoy.log", timeout=timeout
        )
    except BaseException:
        extauthz.stop()
        raise
    return extauthz, envoy


def start_stack(
    config: Path,
    *,
    echo_port: int,
    log_dir: Path,
    envoy_source: Path | None = None,
    ext_authz_timeout: str | None = None,
    timeout: float = STARTUP_TIMEOUT,
    transport: str = "grpc",
) -> Stack:
    """Start extauthz with ``config`` and Envoy (deploy/envoy/envoy.yaml on free ports, its
    upstream pointed at ``echo_port``); wait for both to be ready; return the :class:`Stack`.
    On failure everything started is stopped and ProcessError carries the log tails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, grpc_port, http_port = free_ports(4)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=grpc_port, echo=echo_port)
    kwargs: dict[str, Any] = {"ext_authz_timeout": ext_authz_timeout}
    if envoy_source is not None:
        kwargs["source"] = envoy_source
    envoy_config = write_envoy_config(log_dir / "envoy.yaml", ports, **kwargs)
    extauthz_args = GRPC_SERVER_ARGS[transport]
    extauthz, envoy = start_pair(config, envoy_config, ports, http_port, log_dir, timeout,
                                 extauthz_args=extauthz_args)
    return Stack(
        config=config,
        ports=ports,
        http_port=http_port,
        log_dir=log_dir,
        extauthz=extauthz,
        envoy=envoy,
        envoy_config=envoy_config,
        timeout=timeout,
        extauthz_args=extauthz_args,
    )
