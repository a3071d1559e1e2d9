"""The shipped deploy/envoy configs keep what the parity table (tests/e2e/test_e2e_parity.py)
proved through Envoy: a route with ext_authz disabled strips the identity namespace in every
spelling, and the HTTP transport's config carries what gRPC carries (route name, rewritten
cookie, dynamic metadata) without letting the client choose the route."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.http_authz import ROUTE_HEADER
from extauthz.respond.http import METADATA_PREFIX

ENVOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
CONFIGS = sorted(ENVOY_DIR.glob("*.yaml"))
EXT_AUTHZ = "envoy.filters.http.ext_authz"
MUTATION = "envoy.filters.http.header_mutation"
#: every spelling a CGI/WSGI upstream reads as an x-auth-* header (Envoy stores names lowercase)
SPELLINGS = ["x-auth-subject", "x_auth_subject", "x-auth.subject", "x.auth_consumer",
             "x_auth-scopes"]


def _hcm(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    listener = data["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _routes(hcm: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in hcm["http_filters"] if f["name"] == name]
    typed: dict[str, Any] = found["typed_config"]
    return typed


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_disabled_routes_strip_every_spelling_of_the_identity_namespace(path: Path) -> None:
    hcm = _hcm(path)
    disabled = [r for r in _routes(hcm)
                if r.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {}).get("disabled")]
    assert disabled, f"{path.name}: the example disabled route is gone"
    for route in disabled:
        mutations = route["typed_per_filter_config"][MUTATION]["mutations"]["request_mutations"]
        regexes = [m["remove_on_match"]["key_matcher"]["safe_regex"]["regex"]
                   for m in mutations if "remove_on_match" in m]
        assert regexes, f"{path.name}: {route['match']} does not strip x-auth-*"
        for name in SPELLINGS:
            assert any(re.fullmatch(rx, name) for rx in regexes), (path.name, name)
        assert not any(re.fullmatch(rx, "x-authority") for rx in regexes)


def test_http_transport_config_carries_route_cookie_and_metadata() -> None:
    hcm = _hcm(ENVOY_DIR / "envoy-http-authz.yaml")
    authz = _filter(hcm, EXT_AUTHZ)["http_service"]
    added = {h["key"]: h["value"] for h in authz["authorization_request"]["headers_to_add"]}
    assert added[ROUTE_HEADER] == "%ROUTE_NAME%"
    response = authz["authorization_response"]
    upstream = response["allowed_upstream_headers"]["patterns"]
    assert {"exact": "cookie"} in upstream  # the rewritten Cookie without the credential
    assert {"prefix": "x-auth-"} in upstream
    assert {"prefix": METADATA_PREFIX} in response["dynamic_metadata_from_headers"]["patterns"]
    # a client-sent route name never reaches extauthz: %ROUTE_NAME% of an unnamed route is
    # empty and headers_to_add then leaves the client's value in place
    assert {"exact": ROUTE_HEADER} in _filter(hcm, EXT_AUTHZ)["disallowed_headers"]["patterns"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_ext_authz_sees_every_client_header(path: Path) -> None:
    """extauthz can only remove the spellings it is shown: every client header must reach it
    (gRPC: Envoy's default; HTTP: allowed_headers must match everything)."""
    authz = _filter(_hcm(path), EXT_AUTHZ)
    allowed = authz.get("allowed_headers")
    if "http_service" in authz:
        assert allowed == {"patterns": [{"safe_regex": {"regex": ".*"}}]}
        # the only exceptions: headers Envoy sets itself (headers_to_add), whose client-sent
        # copies must not reach extauthz (the route name above)
        own = {h["key"] for h in authz["http_service"]["authorization_request"]["headers_to_add"]}
        for pattern in authz.get("disallowed_headers", {}).get("patterns", []):
            assert set(pattern) == {"exact"} and pattern["exact"] in own, pattern
    else:
        assert allowed is None and "disallowed_headers" not in authz
