"""deploy/envoy/envoy.yaml: Envoy 1.40 accepts it, and it says what the docs say it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.config.loader import load_config
from tests.support.envoy import (
    ENVOY_CONFIG,
    EnvoyPorts,
    envoy_version,
    render_config,
    validate_config,
    write_envoy_config,
)
from tests.support.processes import POLICIES

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HEADER_MUTATION = "envoy.filters.http.header_mutation"


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
    return data


@pytest.fixture(scope="module")
def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (vhost,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
    found: list[dict[str, Any]] = vhost["routes"]
    return found


def _per_route(route: dict[str, Any]) -> dict[str, Any]:
    per_route: dict[str, Any] = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
    return per_route


def test_envoy_binary_is_1_40() -> None:
    assert "/1.40." in envoy_version()


def test_deploy_config_passes_envoy_validate() -> None:
    result = validate_config(ENVOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_rendered_config_for_test_ports_passes_validate(tmp_path: Path) -> None:
    ports = EnvoyPorts(listener=20001, admin=20002, extauthz=20003, echo=20004)
    path = write_envoy_config(tmp_path / "envoy.yaml", ports, ext_authz_timeout="0.3s")
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = path.read_text()
    for old in ("10000", "19901", "9001", "18080"):
        assert f"port_value: {old}\n" not in rendered


def test_render_refuses_a_config_without_the_expected_ports(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("admin: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n")
    with pytest.raises(ValueError, match="no socket_address"):
        render_config(EnvoyPorts(1, 2, 3, 4), other)


def test_ext_authz_filter_settings(config: dict[str, Any]) -> None:
    filters = [n for n in _walk(config) if isinstance(n, dict) and n.get("name") == EXT_AUTHZ]
    assert len(filters) == 1
    typed = filters[0]["typed_config"]
    assert typed["transport_api_version"] == "V3"
    assert typed["failure_mode_allow"] is False
    assert typed["include_peer_certificate"] is True
    assert typed["grpc_service"]["envoy_grpc"]["cluster_name"] == "extauthz"
    assert typed["grpc_service"]["timeout"] == "1s"


def test_extauthz_cluster_speaks_http2(config: dict[str, Any]) -> None:
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    options = clusters["extauthz"]["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]


def test_every_named_route_exists_in_the_policies(routes: list[dict[str, Any]]) -> None:
    loaded = load_config(POLICIES / "extauthz.yaml")
    defined = {r.name for r in loaded.main.routes}
    defined |= {r.name for f in loaded.fragments for r in f.data.routes}
    named = {
        ctx["route"]
        for route in routes
        if (ctx := _per_route(route).get("check_settings", {}).get("context_extensions"))
    }
    assert named == {"public", "reports", "profile", "orders", "admin"}
    assert named <= defined


def test_disabled_route_strips_the_identity_namespace(
    config: dict[str, Any], routes: list[dict[str, Any]]
) -> None:
    disabled = [r for r in routes if _per_route(r).get("disabled") is True]
    assert len(disabled) == 1
    mutation = disabled[0]["typed_per_filter_config"][HEADER_MUTATION]
    rules = mutation["mutations"]["request_mutations"]
    # every spelling an upstream reads as x-auth-* (x_auth_*, x-auth.*), not only the prefix
    assert {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": "x[-_.]auth[-_.].*"}}}} \
        in rules
    # The filter must exist in the chain, before the router; it mutates nothing globally.
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    chain = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    assert chain.index(HEADER_MUTATION) < chain.index("envoy.filters.http.router")
    (entry,) = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == HEADER_MUTATION]
    assert "mutations" not in entry["typed_config"]
    # Route-level removal runs in the router, after ext_authz, and would drop injected headers.
    assert not any(r.get("request_headers_to_remove") for r in routes)


def test_everything_binds_loopback(config: dict[str, Any]) -> None:
    addresses = [n for n in _walk(config) if isinstance(n, dict) and "port_value" in n]
    assert addresses
    assert {a["address"] for a in addresses} == {"127.0.0.1"}
