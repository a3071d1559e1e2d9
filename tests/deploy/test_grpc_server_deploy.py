"""Every shipped deployment serves gRPC from the built-in HTTP/2 server (docs/grpc-native.md),
said explicitly: losing ``EXTAUTHZ_GRPC_SERVER=native`` (a pod would then follow whatever the
default becomes), or the image's setting, fails here. (tests/deploy/test_pod_smoke.py runs the
rendered pods with that environment: the server answers, and Envoy's grpc_health_check sees it
healthy.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.cli import build_parser

from .conftest import BUILDS, DEPLOY, REPO, SIDECAR_BUILDS, extauthz_containers

IN_POD = DEPLOY / "istio" / "in-pod" / "extauthz-container.yaml"


def _assert_native(container: dict[str, Any], where: str, *, sidecar: bool = True) -> None:
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env.get("EXTAUTHZ_GRPC_SERVER") == "native", f"{where}: the gRPC server is not said"
    args = build_parser(env).parse_args(container["args"])
    assert args.env_error is None, where
    assert args.grpc_server == "native", f"{where}: gRPC is not served by the built-in server"
    if sidecar:
        # the gRPC port stays on loopback where Envoy is in the pod (whoever reaches it can
        # ask for any check: docs/grpc-native.md "Who can connect")
        assert args.grpc_address.startswith("127.0.0.1:"), f"{where}: {args.grpc_address}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_extauthz_container_serves_grpc_from_the_built_in_server(name: str) -> None:
    found = extauthz_containers(name)
    assert found, name
    for _, container in found:
        # a standalone variant's gRPC port is on the pod IP, behind its NetworkPolicy
        _assert_native(container, f"{name}/{container['name']}", sidecar=name in SIDECAR_BUILDS)


def test_istio_in_pod_container_serves_grpc_from_the_built_in_server() -> None:
    patch = yaml.safe_load(IN_POD.read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    _assert_native(container, "istio/in-pod")


def test_the_image_defaults_to_the_built_in_server() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EXTAUTHZ_GRPC_SERVER=native" in dockerfile
    runtime = (REPO / "requirements" / "runtime.txt").read_text()
    assert "\nhpack==" in runtime  # the built-in server's HPACK decoder
    # the Envoy front stays available (--grpc-server envoy) and the image proves Envoy runs
    assert "\nenvoy-server==" in runtime
    assert "find_envoy" in dockerfile
    # grpcio is the extra of the grpc.aio server only (extauthz[grpcio]): not in the image
    assert "\ngrpcio==" not in runtime and "\ngrpcio-health-checking==" not in runtime


def test_the_server_flag_defaults_to_native() -> None:
    args = build_parser({}).parse_args(["serve", "--config", "x"])
    assert args.grpc_server == "native"
    assert Path(str(REPO / "docs" / "grpc-native.md")).exists()
