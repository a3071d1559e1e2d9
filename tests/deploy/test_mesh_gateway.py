"""Istio and Envoy Gateway variants. Their custom resources have no offline schema (the CRDs are
not in kubernetes-validate), so they are checked field by field against the upstream APIs
(Istio MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider, AuthorizationPolicy;
Envoy Gateway SecurityPolicy.extAuth), and against the Service they must point at."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import DEPLOY, get, objects

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
    (policy,) = objects("envoy-gateway", "SecurityPolicy")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    spec = policy["spec"]
    (target,) = spec["targetRefs"]
    assert target == {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}
    ext_auth = spec["extAuth"]
    assert ext_auth["failOpen"] is False
    assert "http" not in ext_auth
    (backend,) = ext_auth["grpc"]["backendRefs"]
    service = get("envoy-gateway", "Service", backend["name"])
    assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert "namespace" not in backend, "same namespace: no ReferenceGrant needed"
    route = yaml.safe_load((DEPLOY / "envoy-gateway" / "httproute-example.yaml").read_text())
    assert route["kind"] == "HTTPRoute" and route["metadata"]["name"] == target["name"]


def test_mesh_and_gateway_proxies_may_reach_extauthz() -> None:
    istio = get("istio", "NetworkPolicy", "extauthz")
    assert istio["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    gateway = get("envoy-gateway", "NetworkPolicy", "extauthz")
    (peer,) = gateway["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "envoy-gateway-system"
    }
