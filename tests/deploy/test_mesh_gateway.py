"""Istio and Envoy Gateway variants. Their custom resources have no offline schema (the CRDs are
not in kubernetes-validate), so they are checked field by field against the upstream APIs
(Istio MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider, AuthorizationPolicy;
Envoy Gateway SecurityPolicy.extAuth), and against the Service they must point at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from extauthz.cli import build_parser
from extauthz.config.schema import Settings

from .conftest import DEPLOY, get, objects

DATA = Path(__file__).parent / "data"
IN_POD = DEPLOY / "istio" / "in-pod"

ISTIO_GRPC_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "failOpen",
    "statusOnError",
    "includeRequestBodyInCheck",
}


def mesh_config() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "istio" / "mesh-config.yaml").read_text())
    assert doc["apiVersion"] == "install.istio.io/v1alpha1"
    assert doc["kind"] == "IstioOperator"
    return doc["spec"]["meshConfig"]


def test_istio_extension_provider_points_at_the_extauthz_service() -> None:
    (provider,) = mesh_config()["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= ISTIO_GRPC_PROVIDER_FIELDS, set(grpc) - ISTIO_GRPC_PROVIDER_FIELDS
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    name, namespace, *rest = grpc["service"].split(".")
    assert rest == ["svc", "cluster", "local"]
    assert namespace == "extauthz-demo"  # the namespace docs/kubernetes.md uses
    service = get("istio", "Service", name)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == grpc["port"]]
    assert port["appProtocol"] == "grpc"
    assert mesh_config()["pathNormalization"]["normalization"] in {
        "MERGE_SLASHES",
        "DECODE_AND_MERGE_SLASHES",
    }


def test_istio_authorization_policy_uses_the_provider_and_spares_extauthz() -> None:
    (policy,) = objects("istio", "AuthorizationPolicy")
    assert policy["apiVersion"] == "security.istio.io/v1"
    spec = policy["spec"]
    assert spec["action"] == "CUSTOM"
    (provider,) = mesh_config()["extensionProviders"]
    assert spec["provider"]["name"] == provider["name"]
    assert spec["rules"], "CUSTOM needs at least one rule; [{}] matches every request"
    selector = spec["selector"]["matchLabels"]
    extauthz = get("istio", "Deployment", "extauthz")
    labels = extauthz["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items(), "the policy must not select extauthz itself"


def test_envoy_gateway_security_policy_points_at_the_extauthz_service() -> None:
    policies = objects("envoy-gateway", "SecurityPolicy")
    assert {p["metadata"]["name"] for p in policies} == {"extauthz", "extauthz-api",
                                                         "extauthz-public"}
    route = yaml.safe_load((DEPLOY / "envoy-gateway" / "httproute-example.yaml").read_text())
    assert route["kind"] == "HTTPRoute"
    for policy in policies:
        assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
        spec = policy["spec"]
        (target,) = spec["targetRefs"]
        assert {k: target[k] for k in ("group", "kind", "name")} == {
            "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}
        assert route["metadata"]["name"] == target["name"]
        ext_auth = spec["extAuth"]
        assert ext_auth["failOpen"] is False
        assert ext_auth["statusOnError"] == 503
        assert "http" not in ext_auth
        (backend,) = ext_auth["grpc"]["backendRefs"]
        service = get("envoy-gateway", "Service", backend["name"])
        assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
        assert "namespace" not in backend, "same namespace: no ReferenceGrant needed"


def test_mesh_and_gateway_proxies_may_reach_extauthz() -> None:
    istio = get("istio", "NetworkPolicy", "extauthz")
    assert istio["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    gateway = get("envoy-gateway", "NetworkPolicy", "extauthz")
    (peer,) = gateway["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "envoy-gateway-system"
    }


# -------------------------------------------------- offline CRD schemas (tests/deploy/data)


def _strict(schema: Any) -> Any:
    """A Kubernetes structural schema as the API server applies it with strict field validation:
    an object with ``properties`` accepts no other key (unless it preserves unknown fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _validator(file: str, key: str) -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / file).read_text())[key]
    return jsonschema.Draft7Validator(_strict(schema))


def _errors(validator: jsonschema.Draft7Validator, spec: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(spec)]


def _istio_objects() -> list[dict[str, Any]]:
    found = [o for o in objects("istio", "AuthorizationPolicy") + objects("istio", "EnvoyFilter")]
    for file in ("serviceentry.yaml", "authorizationpolicy.yaml"):
        found.append(yaml.safe_load((IN_POD / file).read_text()))
    return found


def test_istio_resources_validate_against_istio_crd_schemas() -> None:
    kinds = set()
    for obj in _istio_objects():
        key = f"{obj['apiVersion']}/{obj['kind']}"
        kinds.add(obj["kind"])
        assert _errors(_validator("istio-crd-specs.schema.json", key), obj["spec"]) == [], key
    assert kinds == {"AuthorizationPolicy", "EnvoyFilter", "ServiceEntry"}


def test_the_crd_check_refuses_a_wrong_field() -> None:
    """The schema check can fail: a misspelt or mistyped field is reported."""
    validator = _validator("istio-crd-specs.schema.json",
                           "security.istio.io/v1/AuthorizationPolicy")
    assert _errors(validator, {"action": "CUSTOM", "provider": {"nmae": "x"}})
    assert _errors(validator, {"action": "ALLOWED"})
    eg = _validator("envoy-gateway-securitypolicy-extauth.schema.json", "spec")
    assert _errors(eg, {"extAuth": {"statusOnError": 299}})
    assert _errors(eg, {"extAuth": {"contextExtension": []}})


def test_envoy_gateway_policies_validate_against_the_crd_schema() -> None:
    validator = _validator("envoy-gateway-securitypolicy-extauth.schema.json", "spec")
    for policy in objects("envoy-gateway", "SecurityPolicy"):
        assert _errors(validator, policy["spec"]) == [], policy["metadata"]["name"]
        for extension in policy["spec"]["extAuth"].get("contextExtensions", []):
            # the CRD's CEL rule (x-kubernetes-validations), which jsonschema does not run
            assert extension["type"] == "Value" and "value" in extension
            assert "valueRef" not in extension


def test_envoy_gateway_context_extensions_name_extauthz_routes() -> None:
    """Each rule-level policy targets a named HTTPRoute rule and names an extauthz route of the
    shipped routes.yaml under settings.route_key: extauthz does no second route matching."""
    route_key = Settings().route_key
    routes = yaml.safe_load((DEPLOY / "k8s" / "components" / "extauthz-config" / "routes.yaml")
                            .read_text())["routes"]
    route_names = {r["name"] for r in routes}
    http_route = yaml.safe_load((DEPLOY / "envoy-gateway" / "httproute-example.yaml").read_text())
    rule_names = {r.get("name") for r in http_route["spec"]["rules"]}
    named = 0
    for policy in objects("envoy-gateway", "SecurityPolicy"):
        (target,) = policy["spec"]["targetRefs"]
        extensions = policy["spec"]["extAuth"].get("contextExtensions", [])
        if "sectionName" not in target:
            assert extensions == [], "the route-level policy lets extauthz match routes itself"
            continue
        assert target["sectionName"] in rule_names
        ((name, value),) = [(e["name"], e["value"]) for e in extensions]
        assert name == route_key and value in route_names
        named += 1
    assert named == 2


def test_one_error_status_for_every_kubernetes_integration() -> None:
    """extauthz unreachable / timed out -> 503 (fail closed) on every shipped integration."""
    for mesh in (DEPLOY / "istio" / "mesh-config.yaml", IN_POD / "mesh-config.yaml"):
        for provider in yaml.safe_load(mesh.read_text())["spec"]["meshConfig"][
                "extensionProviders"]:
            grpc = provider["envoyExtAuthzGrpc"]
            assert (grpc["failOpen"], grpc["statusOnError"]) == (False, "503"), mesh
    for policy in objects("envoy-gateway", "SecurityPolicy"):
        assert policy["spec"]["extAuth"]["statusOnError"] == 503
    for envoy in [*(DEPLOY / "k8s").rglob("envoy.yaml"), *(DEPLOY / "envoy").glob("*.yaml")]:
        text = envoy.read_text()
        if "envoy.filters.http.ext_authz" in text:
            assert "status_on_error: { code: ServiceUnavailable }" in text, envoy
            assert "failure_mode_allow: true" not in text, envoy


def test_istio_in_pod_recipe_agrees_with_itself() -> None:
    """The in-pod sidecar recipe (Istio's ext-authz sample pattern): provider -> ServiceEntry ->
    127.0.0.1 -> the extauthz container's gRPC address (set by EXTAUTHZ_* variables)."""
    mesh = yaml.safe_load((IN_POD / "mesh-config.yaml").read_text())["spec"]["meshConfig"]
    shared = yaml.safe_load((DEPLOY / "istio" / "mesh-config.yaml").read_text())["spec"][
        "meshConfig"]
    assert {k: v for k, v in mesh.items() if k != "extensionProviders"} == {
        k: v for k, v in shared.items() if k != "extensionProviders"}
    (provider,) = mesh["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= ISTIO_GRPC_PROVIDER_FIELDS
    entry = yaml.safe_load((IN_POD / "serviceentry.yaml").read_text())["spec"]
    assert entry["hosts"] == [grpc["service"]] and entry["resolution"] == "STATIC"
    assert entry["endpoints"] == [{"address": "127.0.0.1"}]
    (port,) = entry["ports"]
    assert port["number"] == grpc["port"] and port["protocol"] == "GRPC"
    policy = yaml.safe_load((IN_POD / "authorizationpolicy.yaml").read_text())["spec"]
    assert policy["action"] == "CUSTOM" and policy["provider"]["name"] == provider["name"]
    patch = yaml.safe_load((IN_POD / "extauthz-container.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    args = build_parser(env).parse_args(container["args"])
    assert args.env_error is None
    assert args.grpc_address == f"127.0.0.1:{grpc['port']}"
    assert args.config == "/etc/extauthz/extauthz.yaml"
    admin_port = int(args.http_address.rsplit(":", 1)[1])
    assert container["ports"] == [{"name": "extauthz-admin", "containerPort": admin_port}]
    sources = patch["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert {s.get("configMap", s.get("secret"))["name"] for s in sources} == {
        "extauthz-config", "extauthz-policies", "extauthz-credentials"}


@pytest.mark.parametrize("doc", ["kubernetes.md"])
def test_docs_state_the_mesh_recipes(doc: str) -> None:
    text = (DEPLOY.parent / "docs" / doc).read_text()
    for needle in ("in-pod", "ServiceEntry", "ambient", "waypoint", "source.principal",
                   "statusOnError", "contextExtensions", "503"):
        assert needle in text, needle
