"""The extauthz configuration every build mounts is valid, read the way the pod reads it: from a
volume laid out by the kubelet (symlinks into a hidden timestamped directory)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import BUILDS, REPO, config_data, extauthz_command, extauthz_containers, flag, get
from .podsim import volume_files, write_kubelet_volume

DEMO_KEY = "eak_k8s_demo_key_NOT_SECRET_0001"


def _mount_for(container: dict, path: str) -> dict:
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{path} is not under exactly one mount"
    return mounts[0]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_mounted_configuration_validates(name: str, tmp_path: Path) -> None:
    checked = set()
    for deployment, container in extauthz_containers(name):
        config = flag(container["args"], "--config")
        mount = _mount_for(container, config)
        key = (deployment["metadata"]["name"], mount["name"])
        if key in checked:
            continue
        checked.add(key)
        files = volume_files(name, deployment, mount["name"])
        root = write_kubelet_volume(tmp_path / mount["name"], files)
        local = root / Path(config).relative_to(mount["mountPath"])
        # the container's environment too: settings.redis.url_env reads it (overlays/redis)
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])
                                if "value" in e}}
        result = subprocess.run(
            [*extauthz_command(), "validate", "--config", str(local)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "ok (" in result.stdout
    assert checked


def test_source_files_validate_in_place() -> None:
    """The component directory is itself a valid configuration (what its header promises)."""
    path = REPO / "deploy/k8s/components/extauthz-config/extauthz.yaml"
    result = subprocess.run(
        [*extauthz_command(), "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_key_is_the_documented_one() -> None:
    """consumers.yaml and docs/kubernetes.md describe the same (public, demo-only) key."""
    from extauthz.keys import hash_api_key

    consumers = yaml.safe_load(
        config_data(get("base", "Secret", "extauthz-credentials"))["consumers.yaml"]
    )["consumers"]
    hashes = {k["hash"] for c in consumers for k in c["keys"]}
    assert hashes == {hash_api_key(DEMO_KEY)}
    assert DEMO_KEY in (REPO / "docs/kubernetes.md").read_text()


def test_every_route_can_be_selected_without_envoy_naming_it() -> None:
    """Istio and Envoy Gateway send no context_extensions: every route needs a `match`."""
    routes = yaml.safe_load(
        config_data(get("istio", "ConfigMap", "extauthz-policies"))["routes.yaml"]
    )["routes"]
    for route in routes:
        assert route.get("match"), f"route {route['name']} has no match block"
