"""The Envoy configuration inside each build's envoy-config ConfigMap: valid for Envoy 1.40, the
security-relevant settings are there, the overlays change nothing but the extauthz cluster, and
Envoy's endpoints agree with the ports the extauthz containers actually listen on."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    ENVOY_BUILDS,
    config_data,
    containers,
    envoy_binary,
    extauthz_containers,
    flag,
    get,
)

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def envoy_config(name: str) -> dict[str, Any]:
    data = config_data(get(name, "ConfigMap", "envoy-config"))
    assert set(data) == {"envoy.yaml"}
    return yaml.safe_load(data["envoy.yaml"])


def envoy_text(name: str) -> str:
    return config_data(get(name, "ConfigMap", "envoy-config"))["envoy.yaml"]


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [item for item in config["static_resources"]["listeners"] if item["name"] == name]
    return found


def hcm(config: dict[str, Any], name: str) -> dict[str, Any]:
    (chain,) = listener(config, name)["filter_chains"]
    (network_filter,) = chain["filters"]
    assert network_filter["typed_config"]["@type"] == HCM
    return network_filter["typed_config"]


def endpoints(c: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in c["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_envoy_validates_the_rendered_config(name: str, tmp_path: Path) -> None:
    """`envoy --mode validate` on exactly what the ConfigMap holds (0.0.0.0 listeners and DNS
    names are fine: validate mode binds and resolves nothing)."""
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_text(name))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_ingress_listener_is_hardened(name: str) -> None:
    config = envoy_config(name)
    ingress = listener(config, "ingress_http")
    assert ingress["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    manager = hcm(config, "ingress_http")
    # extauthz refuses un-normalized paths with 400; Envoy must normalize (and reject %2F).
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["forward_client_cert_details"] == "SANITIZE"
    filters = manager["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.ext_authz", "ext_authz must run first"
    assert filters[-1]["name"] == "envoy.filters.http.router"
    ext_authz = filters[0]["typed_config"]
    assert ext_authz["@type"] == EXT_AUTHZ
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "extauthz"
    assert ext_authz["grpc_service"]["timeout"]
    # The admin interface never leaves the pod.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_extauthz_cluster_speaks_http2_and_is_health_checked(name: str) -> None:
    c = cluster(envoy_config(name), "extauthz")
    options = c["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = c["health_checks"]
    assert check["grpc_health_check"]["service_name"] == "envoy.service.auth.v3.Authorization"
    assert c["common_lb_config"]["healthy_panic_threshold"]["value"] == 0


def _without_extauthz_cluster(config: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(config)
    stripped["static_resources"]["clusters"] = [
        c for c in stripped["static_resources"]["clusters"] if c["name"] != "extauthz"
    ]
    return stripped


@pytest.mark.parametrize("name", sorted(set(ENVOY_BUILDS) - {"base"}))
def test_overlays_change_only_the_extauthz_cluster(name: str) -> None:
    """The overlays carry a full copy of envoy.yaml (kustomize cannot patch inside a ConfigMap
    value); this keeps the copies from drifting."""
    assert _without_extauthz_cluster(envoy_config(name)) == _without_extauthz_cluster(
        envoy_config("base")
    )


#: Builds whose Envoy calls a shared extauthz Deployment, not workers in its own pod.
SHARED_ENVOY_BUILDS = {"shared", "prometheus-operator-shared"}


@pytest.mark.parametrize("name", sorted(set(ENVOY_BUILDS) - SHARED_ENVOY_BUILDS))
def test_envoy_endpoints_are_the_extauthz_workers_of_the_pod(name: str) -> None:
    config = envoy_config(name)
    workers = [c for d, c in extauthz_containers(name) if d["metadata"]["name"] == "app"]
    expected = sorted(
        (host, int(port))
        for host, _, port in (flag(c["args"], "--grpc-address").rpartition(":") for c in workers)
    )
    assert sorted(endpoints(cluster(config, "extauthz"))) == expected
    if len(workers) > 1:
        # one endpoint per process, balanced per request (see overlays/multi-worker)
        assert cluster(config, "extauthz")["lb_policy"] == "LEAST_REQUEST"


@pytest.mark.parametrize("name", sorted(SHARED_ENVOY_BUILDS))
def test_shared_envoy_finds_every_extauthz_pod_through_the_headless_service(name: str) -> None:
    c = cluster(envoy_config(name), "extauthz")
    assert c["type"] == "STRICT_DNS"
    ((host, port),) = endpoints(c)
    service = get(name, "Service", host)
    assert service["spec"]["clusterIP"] == "None"
    assert port in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_app_cluster_is_the_app_container_address(name: str) -> None:
    app = get(name, "Deployment", "app")
    env = {e["name"]: e["value"] for e in containers(app)["app"]["env"]}
    host, _, port = env["ECHO_ADDRESS"].rpartition(":")
    assert endpoints(cluster(envoy_config(name), "app")) == [(host, int(port))]


@pytest.mark.parametrize("name", sorted(ENVOY_BUILDS))
def test_envoy_container_reads_the_configmap_and_probes_its_health_listener(name: str) -> None:
    app = get(name, "Deployment", "app")
    envoy = containers(app)["envoy"]
    assert flag(envoy["args"], "--config-path") == "/etc/envoy/envoy.yaml"
    assert {m["mountPath"] for m in envoy["volumeMounts"]} == {"/etc/envoy"}
    health = listener(envoy_config(name), "envoy_health")
    port = health["address"]["socket_address"]["port_value"]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports[envoy["readinessProbe"]["httpGet"]["port"]] == port
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert (
        ports["http"]
        == listener(envoy_config(name), "ingress_http")["address"]["socket_address"]["port_value"]
    )


def test_envoy_route_names_exist_in_the_extauthz_config() -> None:
    """context_extensions {route: NAME} must name a route extauthz has, or every request on that
    Envoy route is denied (extauthz fails closed on an unknown route name)."""
    policies = yaml.safe_load(
        config_data(get("base", "ConfigMap", "extauthz-policies"))["routes.yaml"]
    )
    known = {r["name"] for r in policies["routes"]}
    manager = hcm(envoy_config("base"), "ingress_http")
    named = set()
    for vhost in manager["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            per_filter = route.get("typed_per_filter_config", {}).get(
                "envoy.filters.http.ext_authz"
            )
            if per_filter:
                named.add(per_filter["check_settings"]["context_extensions"]["route"])
    assert named and named <= known, named - known
