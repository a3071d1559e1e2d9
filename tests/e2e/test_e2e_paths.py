"""Path tricks through the real Envoy: the path that is authorized is the path that is served.

Two Envoys in front of the same kind of extauthz: ``stack`` runs deploy/envoy/envoy.yaml (which
normalizes paths), ``raw_stack`` the same file without ``normalize_path`` / ``merge_slashes`` /
``path_with_escaped_slashes_action`` to show that extauthz then fails closed by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.background import BackgroundApp
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.envoy import ENVOY_CONFIG
from tests.support.processes import Stack, start_stack

KEY = {"x-api-key": DEMO_API_KEY}  # scopes reports:read, orders:read -- not admin
NORMALIZATION = ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action")


@pytest.fixture(scope="module")
def raw_stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[Stack]:
    data: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for key in NORMALIZATION:
        del hcm["typed_config"][key]
    source = e2e_dir / "envoy-no-normalization.yaml"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    running = start_stack(
        extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "raw", envoy_source=source
    )
    try:
        yield running
    finally:
        running.stop()


# -- deploy/envoy/envoy.yaml: Envoy normalizes, then routes and asks extauthz -------------------


@pytest.mark.parametrize(
    "path", ["/reports/../admin/stats", "/reports/%2e%2e/admin/stats", "//admin/stats"]
)
def test_traversal_is_authorized_against_the_normalized_path(stack: Stack, path: str) -> None:
    # Normalized to /admin/stats: the admin policy applies, and the demo key lacks scope admin.
    assert_denied(stack.get(path, KEY), 403, "insufficient_scope")


def test_dot_segment_is_resolved_before_the_upstream(stack: Stack) -> None:
    r = stack.get("/reports/./q1", KEY)
    upstream_headers(r)
    assert r.json()["path"] == "/reports/q1"


@pytest.mark.parametrize(
    "path", ["/reports%2F..%2Fadmin/stats", "/reports/..%2Fadmin/stats", "/reports/q1%00"]
)
def test_encoded_slashes_and_nul_are_rejected_by_envoy(stack: Stack, path: str) -> None:
    r = stack.get(path, KEY)
    assert r.status == 400, r.text


def test_paths_are_case_sensitive(stack: Stack) -> None:
    assert_denied(stack.get("/REPORTS/q1", KEY), 403, "no_route")


def test_query_string_does_not_change_the_route(stack: Stack) -> None:
    r = stack.get("/reports/q1?next=/admin/stats", KEY)
    upstream_headers(r)
    assert r.json()["path"] == "/reports/q1"
    assert r.json()["query"] == "next=/admin/stats"


# -- the same without Envoy's normalization: extauthz refuses ambiguous paths itself -----------


@pytest.mark.parametrize(
    "path",
    ["/reports/../admin/stats", "/reports/%2e%2e/admin/stats", "//admin/stats",
     "/reports/..%2Fadmin/stats", "/reports/./q1",
     # servlet path parameters and double encoding (issue 12): judged literally they would
     # match /reports/, while a servlet container or a second decoding serves /admin/stats
     "/reports/..;/admin/stats", "/reports/..;x=1/admin/stats", "/reports;x=1/../admin/stats",
     "/reports/%2e%2e;/admin/stats", "/reports/%252e%252e/admin/stats", "/reports/%252fx",
     "/reports/%c0%ae%c0%ae/admin/stats", "/reports/q1;jsessionid=1"],
)  # fmt: skip
def test_without_normalization_extauthz_fails_closed(raw_stack: Stack, path: str) -> None:
    r = raw_stack.get(path, KEY)
    assert r.status != 200
    assert_denied(r, 400, "bad_request")
