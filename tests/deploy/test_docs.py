"""docs/kubernetes.md is followed literally: its links and paths exist, its kubectl/extauthz
commands name real kustomizations and valid arguments, and the "your own API keys" overlay it
prints builds, replaces the demo key, and authorizes with the newly generated key."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from .conftest import BIN, BUILDS, REPO, extauthz_command, kustomize
from .podsim import write_kubelet_volume
from .test_extauthz_config import DEMO_KEY

DOC = REPO / "docs" / "kubernetes.md"


def doc() -> str:
    return DOC.read_text()


def code_blocks(lang: str | None = None) -> list[str]:
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc(), re.DOTALL)
    return [body for kind, body in blocks if lang is None or kind == lang]


def test_links_resolve() -> None:
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", doc()):
        assert (DOC.parent / target).resolve().exists(), target


def test_every_kustomization_in_the_doc_exists_and_every_build_is_documented() -> None:
    paths = set(re.findall(r"apply -k (\S+)", doc())) - {"."}
    assert paths
    known = {p.relative_to(REPO).as_posix() for p in BUILDS.values()}
    assert paths <= known, paths - known
    for name, path in BUILDS.items():
        assert path.relative_to(REPO).as_posix() in doc() or name in doc(), name


def test_extauthz_commands_in_the_doc_parse() -> None:
    from extauthz.cli import build_parser

    found = 0
    for block in code_blocks("sh"):
        for match in re.finditer(r"(?:^|;\s*)extauthz ([^;|>&\n}]+)", block, re.MULTILINE):
            argv = shlex.split(match.group(1))
            build_parser().parse_args(argv)
            found += 1
    assert found >= 2


def test_the_own_keys_overlay_replaces_the_demo_key(tmp_path: Path) -> None:
    marker = doc().index("<!-- tested: tests/deploy/test_docs.py")
    overlay = re.search(r"```yaml\n(.*?)```", doc()[marker:], re.DOTALL).group(1)
    mine = tmp_path / "my-extauthz"
    mine.mkdir()
    # kustomize wants a relative path to the base, as in the doc ("the path to your clone")
    overlay = overlay.replace("../extauthz/", os.path.relpath(REPO, mine) + "/")
    (mine / "kustomization.yaml").write_text(overlay)

    # the doc's key generation, as written (with the venv's extauthz on PATH)
    (command,) = [
        line for block in code_blocks("sh") for line in block.splitlines()
        if "keys generate" in line
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not (BIN / "extauthz").exists():
        command = command.replace("extauthz keys", " ".join(extauthz_command()) + " keys")
    result = subprocess.run(
        ["bash", "-c", command], cwd=mine, env=env, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    key = re.search(r"\b(eak_\S+)", result.stderr).group(1)
    # ...plus the scopes line the doc tells you to add
    consumers = yaml.safe_load((mine / "consumers.yaml").read_text())
    consumers["consumers"][0]["keys"][0]["scopes"] = ["api:read"]
    (mine / "consumers.yaml").write_text(yaml.safe_dump(consumers))

    docs = list(kustomize(mine))
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    content = base64.b64decode(secret["data"]["consumers.yaml"]).decode()
    from extauthz.keys import hash_api_key

    assert hash_api_key(key) in content
    assert hash_api_key(DEMO_KEY) not in content
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    sources = deployment["spec"]["template"]["spec"]["volumes"][-1]["projected"]["sources"]
    assert {"name": secret["metadata"]["name"]} in [s.get("secret") for s in sources]
    assert {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]} >= {
        "extauthz:0.1.0"
    }

    # the mounted configuration, read as the pod reads it, authorizes the new key only
    files = {}
    for source in sources:
        kind, ref = ("ConfigMap", source["configMap"]["name"]) if "configMap" in source else (
            "Secret", source["secret"]["name"])  # fmt: skip
        (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == ref]
        for name, value in obj["data"].items():
            files[name] = base64.b64decode(value).decode() if kind == "Secret" else value
    root = write_kubelet_volume(tmp_path / "etc-extauthz", files)
    for candidate, expected in ((key, 0), (DEMO_KEY, 3)):
        request = tmp_path / "request.yaml"
        request.write_text(
            yaml.safe_dump({"path": "/api/orders", "headers": {"x-api-key": candidate},
                            "context_extensions": {"route": "api"}})
        )  # fmt: skip
        check = subprocess.run(
            [*extauthz_command(), "check", "--config", str(root / "extauthz.yaml"),
             "--request", str(request)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert check.returncode == expected, check.stdout + check.stderr
        decision = json.loads(check.stdout)
        if expected == 0:
            assert decision["allowed"] is True
        else:
            assert decision["reason"] == "invalid_api_key"
