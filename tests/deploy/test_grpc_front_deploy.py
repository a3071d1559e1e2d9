"""Every shipped deployment serves gRPC through the Envoy front (docs/grpc-front.md): losing
``EXTAUTHZ_GRPC_SERVER=envoy``, its writable runtime directory, the Envoy binary in the image
or the lock entry that brings it fails here. (tests/deploy/test_pod_smoke.py runs the rendered
pods with that environment: the front serves, and Envoy's grpc_health_check sees it healthy.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.cli import build_parser

from .conftest import BUILDS, DEPLOY, REPO, extauthz_containers

IN_POD = DEPLOY / "istio" / "in-pod" / "extauthz-container.yaml"


def _assert_front(deployment: dict[str, Any], container: dict[str, Any], where: str) -> None:
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    args = build_parser(env).parse_args(container["args"])
    assert args.env_error is None, where
    assert args.grpc_server == "envoy", f"{where}: gRPC is not served through the Envoy front"
    runtime = args.grpc_front_runtime_dir
    assert runtime, f"{where}: no writable runtime directory (the root filesystem is read-only)"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert runtime in mounts, f"{where}: {runtime} is not a mounted volume"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[runtime]], f"{where}: {runtime} is not an emptyDir"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_extauthz_container_serves_grpc_through_the_front(name: str) -> None:
    found = extauthz_containers(name)
    for deployment, container in found:
        _assert_front(deployment, container, f"{name}/{container['name']}")


def test_istio_in_pod_container_serves_grpc_through_the_front() -> None:
    patch = yaml.safe_load(IN_POD.read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    _assert_front(patch, container, "istio/in-pod")


def test_the_image_defaults_to_the_front_and_ships_envoy() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EXTAUTHZ_GRPC_SERVER=envoy" in dockerfile
    assert "find_envoy" in dockerfile  # the builder stage proves the binary is there and runs
    runtime = (REPO / "requirements" / "runtime.txt").read_text()
    assert "\nenvoy-server==" in runtime
    # grpcio is the extra of the grpc.aio server only (extauthz[grpcio]): not in the image
    assert "\ngrpcio==" not in runtime and "\ngrpcio-health-checking==" not in runtime


def test_the_front_flags_exist_and_default_to_grpcio() -> None:
    args = build_parser({}).parse_args(["serve", "--config", "x"])
    assert args.grpc_server == "grpcio"
    assert Path(str(REPO / "docs" / "grpc-front.md")).exists()
