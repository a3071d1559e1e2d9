"""Envoy for the end-to-end tests: the binary, the config on test ports, start and validate.

Everything is implemented in :mod:`extauthz.demo.envoy` (the demo needs it too); this module is
the tests' entry point. The tests always run ``deploy/envoy/envoy.yaml`` itself, with its four
well-known ports (listener 10000, admin 19901, extauthz 9001, echo 18080) substituted, so the
config the docs show is the config the tests exercise.
"""

from __future__ import annotations

from pathlib import Path

from extauthz.demo.envoy import (
    DEMO_PORTS,
    ENVOY_CONFIG,
    EnvoyPorts,
    envoy_argv,
    envoy_version,
    find_envoy,
    render_config,
    start_envoy,
    validate_config,
)

__all__ = [
    "DEMO_PORTS",
    "ENVOY_CONFIG",
    "EnvoyPorts",
    "envoy_argv",
    "envoy_version",
    "find_envoy",
    "render_config",
    "start_envoy",
    "validate_config",
    "write_envoy_config",
]


def write_envoy_config(
    path: Path,
    ports: EnvoyPorts,
    *,
    source: Path = ENVOY_CONFIG,
    ext_authz_timeout: str | None = None,
) -> Path:
    """Render ``source`` for ``ports`` into ``path`` and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(ports, source, ext_authz_timeout=ext_authz_timeout))
    return path
