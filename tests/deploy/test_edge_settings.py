"""Issue 12: every shipped Envoy configuration keeps the edge settings, each with its reason.

Every HTTP connection manager in every Envoy configuration under deploy/ (found by searching,
so a new file cannot escape) must take the client's address from the connection
(``use_remote_address``), pin ``:scheme`` to what the listener is, refuse header names with
``_``, normalize paths for every route (``normalize_path``, ``merge_slashes``, encoded slashes
refused) and say why in a comment next to each; every route table starts with the route that
sends ambiguous paths to the check. The Istio and Envoy Gateway examples carry the equivalent
settings those products have. The configurations themselves are run by tests/e2e
(test_e2e_edge.py) and validated by ``envoy --mode validate`` (tests/e2e, test_envoy_config.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DEPLOY, ENVOY_BUILDS, REPO, config_data, get

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
#: the keys that must be in every HCM (dotted: nested) and the value each must have
EDGE = {
    "use_remote_address": True,
    "common_http_protocol_options.headers_with_underscores_action": "REJECT_REQUEST",
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
}
COMMENTED_KEYS = (
    "use_remote_address",
    "scheme_header_transformation",
    "headers_with_underscores_action",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _envoy_files() -> list[Path]:
    """Every file under deploy/ that configures an Envoy HTTP connection manager directly."""
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        text = path.read_text()
        if "http_connection_manager" not in text:
            continue
        if any(isinstance(n, dict) and n.get("@type") == HCM_TYPE and n.get("stat_prefix")
               for doc in yaml.safe_load_all(text) for n in _walk(doc)):
            found.append(path)
    return found


ENVOY_FILES = _envoy_files()


def _listeners(config: dict[str, Any]) -> Iterator[tuple[str, bool, dict[str, Any]]]:
    """(listener name, TLS?, HCM typed_config) of every HCM in a static config."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                typed = network_filter.get("typed_config", {})
                if typed.get("@type") == HCM_TYPE:
                    yield listener["name"], "transport_socket" in chain, typed


def _get(node: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        node = node.get(key, {})
    return node


def test_every_shipped_envoy_config_is_found() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in ENVOY_FILES}
    assert names == {
        "envoy/envoy.yaml", "envoy/envoy-http-authz.yaml", "envoy/envoy-body.yaml",
        "envoy/envoy-mtls.yaml", "envoy/envoy-ratelimit.yaml", "k8s/base/envoy/envoy.yaml",
        "k8s/overlays/multi-worker/envoy.yaml", "k8s/overlays/shared/envoy.yaml",
    }  # fmt: skip
    # ...and no Envoy configuration hides in the docs either
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        assert HCM_TYPE not in doc.read_text(), f"{doc}: an Envoy config outside deploy/"


@pytest.mark.parametrize("path", ENVOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_connection_manager_keeps_the_edge_settings(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    managers = list(_listeners(config))
    assert managers
    for name, tls, hcm in managers:
        for dotted, value in EDGE.items():
            assert _get(hcm, dotted) == value, f"{path.name}:{name}: {dotted}"
        # A client-sent X-Forwarded-For is not trusted unless an operator counts its proxies.
        assert hcm.get("xff_num_trusted_hops", 0) == 0, f"{path.name}:{name}"
        expected = "https" if tls else "http"
        assert hcm["scheme_header_transformation"] == {"scheme_to_overwrite": expected}, name


@pytest.mark.parametrize("path", ENVOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_edge_setting_says_why(path: Path) -> None:
    """Each setting is preceded by a comment (shared by a group of edge keys, at most)."""
    lines = path.read_text().splitlines()
    keys = {f"{k}:" for k in COMMENTED_KEYS} | {"common_http_protocol_options:"}
    seen = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not any(stripped.startswith(k) for k in COMMENTED_KEYS):
            continue
        seen += 1
        above = index - 1
        while above >= 0 and any(lines[above].strip().startswith(k) for k in keys):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{path.name}:{index + 1}: {stripped}"
    assert seen >= len(COMMENTED_KEYS)


@pytest.mark.parametrize("path", ENVOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_route_table_starts_with_the_ambiguous_path_guard(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    for name, _, hcm in _listeners(config):
        for vhost in hcm["route_config"]["virtual_hosts"]:
            routes = vhost["routes"]
            if all("direct_response" in r for r in routes):
                continue  # forwards nothing (the k8s readiness listener)
            first = routes[0]
            regex = first["match"]["safe_regex"]["regex"]
            assert ";" in regex and "%25" in regex and "%3[Bb]" in regex, f"{name}: {regex}"
            assert "typed_per_filter_config" not in first, f"{name}: the guard must be checked"


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_the_deployed_configmaps_keep_the_edge_settings(name: str) -> None:
    """What kustomize actually puts in the pod (the files above, through configMapGenerator)."""
    config = yaml.safe_load(config_data(get(name, "ConfigMap", "envoy-config"))["envoy.yaml"])
    managers = list(_listeners(config))
    assert {n for n, _, _ in managers} == {"ingress_http", "envoy_health"}
    for listener, _, hcm in managers:
        for dotted, value in EDGE.items():
            assert _get(hcm, dotted) == value, f"{name}:{listener}: {dotted}"


def test_envoy_gateway_client_traffic_policy_has_the_edge_settings() -> None:
    policy = yaml.safe_load((DEPLOY / "envoy-gateway" / "clienttrafficpolicy.yaml").read_text())
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert policy["kind"] == "ClientTrafficPolicy"
    spec = policy["spec"]
    (target,) = spec["targetRefs"]
    assert target["kind"] == "Gateway"
    assert spec["clientIPDetection"] == {"xForwardedFor": {"numTrustedHops": 0}}
    assert spec["headers"]["withUnderscoresAction"] == "RejectRequest"
    assert spec["path"] == {"escapedSlashesAction": "RejectRequest", "disableMergeSlashes": False}


def test_istio_mesh_config_and_envoy_filter_have_the_edge_settings() -> None:
    mesh = yaml.safe_load((DEPLOY / "istio" / "mesh-config.yaml").read_text())["spec"]
    assert mesh["meshConfig"]["pathNormalization"]["normalization"] in {
        "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"}  # fmt: skip
    gateway = mesh["meshConfig"]["defaultConfig"]["gatewayTopology"]
    assert gateway["numTrustedProxies"] == 0
    (envoy_filter,) = [o for o in yaml.safe_load_all(
        (DEPLOY / "istio" / "envoyfilter-edge.yaml").read_text()) if o]
    assert envoy_filter["kind"] == "EnvoyFilter"
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "NETWORK_FILTER"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["patch"]["operation"] == "MERGE"
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["@type"] == HCM_TYPE
    assert typed["common_http_protocol_options"] == {
        "headers_with_underscores_action": "REJECT_REQUEST"}  # fmt: skip
    # the same workloads the AuthorizationPolicy sends to extauthz
    policy = get("istio", "AuthorizationPolicy", "extauthz")
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == (
        policy["spec"]["selector"]["matchLabels"])
    assert get("istio", "EnvoyFilter", "extauthz-edge")  # part of the kustomize build
