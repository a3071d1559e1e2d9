"""Path confusion (issue 12, finding 5): the paths extauthz refuses to judge, with and without the
``settings.paths`` options, and the Envoy guard route of every shipped config against the same
vector list (the guard must divert exactly the ambiguous paths Envoy forwards unchanged)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import GrpcCode
from extauthz.errors import ConfigError
from extauthz.metrics import Metrics
from extauthz.paths import path_problem
from extauthz.pipeline import Engine
from extauthz.request import path_is_normalized
from tests.support.builders import make_view
from tests.support.configs import OPEN_CONFIG, compile_text

REPO = Path(__file__).resolve().parents[2]
ROUTE_CONFIGS = [
    *sorted((REPO / "deploy" / "envoy").glob("*.yaml")),
    REPO / "deploy" / "k8s" / "base" / "envoy" / "envoy.yaml",
    *sorted((REPO / "deploy" / "k8s" / "overlays").glob("*/envoy.yaml")),
]

# (path as Envoy forwards it or as a permissive Envoy would, refused by default,
#  accepted with allow_semicolon, accepted with allow_encoded_percent, matched by the guard route)
OK, NO = True, False
VECTORS: list[tuple[str, bool, bool, bool, bool]] = [
    # unambiguous: judged
    ("/", OK, OK, OK, NO),
    ("/reports/q1", OK, OK, OK, NO),
    ("/reports/q1/", OK, OK, OK, NO),
    ("/.well-known/openid-configuration", OK, OK, OK, NO),
    ("/a/..b/c..", OK, OK, OK, NO),
    ("/a%20b", OK, OK, OK, NO),
    ("/caf%C3%A9", OK, OK, OK, NO),
    ("/~user/x.y", OK, OK, OK, NO),
    # dot segments and empty segments: never (Envoy's normalize_path / merge_slashes remove them)
    ("/public/../admin", NO, NO, NO, NO),
    ("/public/./admin", NO, NO, NO, NO),
    ("/public//admin", NO, NO, NO, NO),
    ("/public/..", NO, NO, NO, NO),
    ("/public/.", NO, NO, NO, NO),
    ("/public/%2e%2e/admin", NO, NO, NO, NO),
    ("/public/.%2E/admin", NO, NO, NO, NO),
    ("/public;x=1/../admin", NO, NO, NO, OK),
    # servlet path parameters on dot / empty segments: never
    ("/public/..;/admin/secret", NO, NO, NO, OK),
    ("/public/..;x=1/admin", NO, NO, NO, OK),
    ("/public/.;/admin", NO, NO, NO, OK),
    ("/public/;x/admin", NO, NO, NO, OK),
    ("/;x/admin", NO, NO, NO, OK),
    ("/public/..", NO, NO, NO, NO),
    ("/public/..%3b/admin", NO, NO, NO, OK),
    ("/public/..%3B", NO, NO, NO, OK),
    # encoded separators, backslash, controls: never
    ("/public%2f..%2fadmin", NO, NO, NO, NO),
    ("/public%5Cadmin", NO, NO, NO, NO),
    ("/public\\..\\admin", NO, NO, NO, NO),
    ("/a%00b", NO, NO, NO, OK),
    ("/a%0Ab", NO, NO, NO, OK),
    ("/a%7f", NO, NO, NO, OK),
    # broken or overlong escapes: never
    ("/a%zz", NO, NO, NO, OK),
    ("/a%", NO, NO, NO, OK),
    ("/a%2", NO, NO, NO, OK),
    ("/%%32%65%%32%65/admin", NO, NO, NO, OK),
    ("/static/%c0%ae%c0%ae/admin", NO, NO, NO, OK),
    ("/static/%C1%9C", NO, NO, NO, OK),
    ("/static/%e0%80%ae%e0%80%ae/admin", NO, NO, NO, OK),
    ("/static/%f0%80%80%ae", NO, NO, NO, OK),
    ("/static/%ff", NO, NO, NO, NO),  # not UTF-8, but no decoder makes a separator of it
    # path parameters: refused by default, judged with allow_semicolon
    ("/admin;x=1/secret", NO, OK, NO, OK),
    ("/a;b", NO, OK, NO, OK),
    ("/cart;jsessionid=0123", NO, OK, NO, OK),
    ("/a%3bb", NO, OK, NO, OK),
    ("/a%3Bb/c", NO, OK, NO, OK),
    # an encoded '%': refused by default, judged with allow_encoded_percent...
    ("/files/100%25", NO, NO, OK, OK),
    ("/files/100%25.txt", NO, NO, OK, OK),
    ("/files/a%2520b", NO, NO, OK, OK),
    # ...unless a second decoding makes a separator, a '%', a control or a non-ASCII byte
    ("/static/%252e%252e/admin", NO, NO, NO, OK),
    ("/static/%252E%252E/admin", NO, NO, NO, OK),
    ("/a%252fb", NO, NO, NO, OK),
    ("/a%255cb", NO, NO, NO, OK),
    ("/a%253bb", NO, NO, NO, OK),
    ("/a%2525", NO, NO, NO, OK),
    ("/a%2500", NO, NO, NO, OK),
    ("/a%25c0%25ae", NO, NO, NO, OK),
]


@pytest.mark.parametrize(("path", "default", "semicolon", "percent", "guard"), VECTORS)
def test_path_vectors(path: str, default: bool, semicolon: bool, percent: bool,
                      guard: bool) -> None:
    assert (path_problem(path) is None) is default
    assert path_is_normalized(path) is default
    assert (path_problem(path, allow_semicolon=True) is None) is (default or semicolon)
    assert (path_problem(path, allow_encoded_percent=True) is None) is (default or percent)
    both = path_problem(path, allow_semicolon=True, allow_encoded_percent=True) is None
    assert both is (default or semicolon or percent)


def test_the_reason_names_the_problem_not_the_path() -> None:
    assert path_problem("/a;jsessionid=SECRET") == "path parameter (;)"
    assert path_problem("/a/..;/b", allow_semicolon=True) == "dot segment"
    assert path_problem("/a%25b") == "encoded '%'"
    assert path_problem("/a%252e", allow_encoded_percent=True) == "double percent-encoding"
    assert path_problem("/%c0%ae") == "percent-encoding that is not UTF-8"
    for path in ("/a;jsessionid=SECRET", "/x%25SECRET"):
        assert "SECRET" not in (path_problem(path) or "")


def _first_routes() -> Iterator[tuple[str, dict[str, Any]]]:
    """(config name, first route) of every virtual host of every shipped Envoy config."""
    for config in ROUTE_CONFIGS:
        data = yaml.safe_load(config.read_text())
        for listener in data["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for network_filter in chain["filters"]:
                    route_config = network_filter["typed_config"].get("route_config", {})
                    for vhost in route_config.get("virtual_hosts", []):
                        if any("direct_response" in r for r in vhost["routes"]):
                            continue  # the k8s readiness listener: it forwards nothing
                        yield f"{config.relative_to(REPO)}:{vhost['name']}", vhost["routes"][0]


FIRST_ROUTES = list(_first_routes())


def test_every_shipped_route_table_starts_with_the_guard() -> None:
    assert len(FIRST_ROUTES) >= 7
    regexes = {route["match"]["safe_regex"]["regex"] for _, route in FIRST_ROUTES}
    assert len(regexes) == 1, "the shipped configs disagree on the guard regex"
    for name, route in FIRST_ROUTES:
        # checked: no per-route config that could disable ext_authz or name a route
        assert "typed_per_filter_config" not in route, name
        assert "cluster" in route["route"], name


@pytest.mark.parametrize(("path", "default", "semicolon", "percent", "guard"), VECTORS)
def test_the_guard_route_diverts_exactly_the_ambiguous_paths(
        path: str, default: bool, semicolon: bool, percent: bool, guard: bool) -> None:
    # Envoy's safe_regex is RE2 with full-match semantics; this regex uses the common subset.
    (_, route), *_ = FIRST_ROUTES
    matched = re.fullmatch(route["match"]["safe_regex"]["regex"], path) is not None
    assert matched is guard
    if matched:
        assert not default, "the guard must never divert a path extauthz accepts by default"


CONFIG = OPEN_CONFIG


def _engine(tmp_path: Path, settings: str = "") -> Engine:
    return Engine(Metrics(), compile_text(tmp_path, CONFIG + settings,
                                          registry={"api_key": ApiKeyAuthenticator.from_spec}))


async def test_engine_refuses_ambiguous_paths_with_400_before_routing(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    for path in ("/public/..;/admin", "/admin;x/secret", "/%252e%252e/admin", "/a%25b"):
        decision = await engine.check(make_view(path))
        assert decision.http_status == 400, path
        assert decision.grpc_code is GrpcCode.INVALID_ARGUMENT, path
        assert decision.reason.value == "bad_request", path
    assert (await engine.check(make_view("/admin/secret"))).http_status == 200


async def test_settings_paths_options_reach_the_engine(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "settings:\n  paths: {allow_semicolon: true, "
                               "allow_encoded_percent: true}\n")
    assert (await engine.check(make_view("/admin;x/secret"))).http_status == 200
    assert (await engine.check(make_view("/files/100%25.txt"))).http_status == 200
    for path in ("/public/..;/admin", "/%252e%252e/admin"):
        assert (await engine.check(make_view(path))).http_status == 400, path


def test_settings_paths_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "settings:\n  paths: {allow_semicolons: true}\n")
    with pytest.raises(ConfigError, match=re.escape("settings.paths.allow_semicolons: unknown")):
        load_config(path)
