"""Small builders for unit tests: request views and build contexts."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from extauthz.authn.context import BuildContext
from extauthz.clock import FixedClock
from extauthz.config.schema import Consumer, Settings
from extauthz.metrics import Metrics
from extauthz.types import Headers, RequestView

NOW = 1_900_000_000.0  # 2030-03-17: fixed "now" for unit tests


def make_view(
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "api.example.com",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    ext: dict[str, str] | None = None,
) -> RequestView:
    return RequestView(
        method=method,
        host=host,
        path=path,
        query=MappingProxyType(dict(query or {})),
        headers=Headers(headers or {}),
        context_extensions=MappingProxyType(dict(ext or {})),
    )


def make_ctx(
    consumers: list[Consumer] | None = None,
    *,
    clock: FixedClock | None = None,
    base_dir: Path | None = None,
    metrics: Metrics | None = None,
) -> BuildContext:
    return BuildContext(
        settings=Settings(),
        metrics=metrics or Metrics(),
        base_dir=base_dir or Path("."),
        consumers=tuple(consumers or ()),
        clock=clock or FixedClock(NOW),
    )
