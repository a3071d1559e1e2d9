"""Configuration fixtures for unit tests: a configuration text compiled as the server does.

``compile_text(tmp_path, text)`` writes ``text`` to a file and runs it through
:func:`~extauthz.config.loader.load_config` and :func:`~extauthz.snapshot.compile_config`, so a
test sees what ``extauthz validate`` and a reload see (located :class:`ConfigError` included).
``api_key_config(key)`` is the smallest protected configuration: one API-key authenticator, one
consumer, one route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from extauthz.config.loader import load_config
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import Snapshot, compile_config, load_snapshot

__all__ = ["OPEN_CONFIG", "api_key_config", "compile_text", "started_engine", "write_config"]

#: one public route matching every path (and an API-key authenticator no route uses): what is
#: refused there is refused before routing and authentication
OPEN_CONFIG = """
authenticators:
  keys: {api_key: {}}
routes:
- name: open
  match: {prefix: /}
  public: true
"""


def write_config(directory: Path, text: str, name: str = "c.yaml") -> Path:
    """``text`` written to ``directory/name``; its path."""
    path = directory / name
    path.write_text(text)
    return path


def compile_text(directory: Path, text: str, *, metrics: Metrics | None = None,
                 name: str = "c.yaml", **options: Any) -> Snapshot:
    """The snapshot of ``text`` (written to ``directory/name``); ``options`` go to
    :func:`~extauthz.snapshot.compile_config` (``registry``, ``clock``, ...)."""
    path = write_config(directory, text, name)
    return compile_config(load_config(path), metrics or Metrics(), **options)


def api_key_config(key: str) -> str:
    """The API-key authenticator ``keys``, the consumer ``alice`` holding ``key`` (id ``k1``,
    scope ``read``) and the route ``api`` (prefix ``/api/``) that requires it."""
    return f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(key)}", scopes: [read]}}]
routes:
- name: api
  match: {{prefix: /api/}}
  authn: [keys]
"""


@asynccontextmanager
async def started_engine(directory: Path, text: str) -> AsyncIterator[Engine]:
    """An :class:`Engine` over the started snapshot of ``text`` (loaded from a file, as the
    server loads it); the snapshot is closed on exit."""
    metrics = Metrics()
    snapshot = load_snapshot(write_config(directory, text, "config.yaml"), metrics)
    await snapshot.start()
    try:
        yield Engine(metrics, snapshot)
    finally:
        await snapshot.close()
