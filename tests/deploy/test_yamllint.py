"""yamllint is clean over everything under deploy/ (settings: .yamllint.yaml at the repository
root, which yamllint finds by itself), and it does catch what it is here for: a duplicated key
such as the `admin:` two overlay Envoy files once had."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def yamllint(*paths: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(REPO / ".yamllint.yaml"),
         "-f", "parsable", *map(str, paths)],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


def test_everything_under_deploy_is_yamllint_clean() -> None:
    result = yamllint("deploy/", ".yamllint.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_flags_a_duplicate_key_and_a_long_line(tmp_path: Path) -> None:
    envoy = (REPO / "deploy/k8s/overlays/shared/envoy.yaml").read_text()
    broken = tmp_path / "envoy.yaml"
    broken.write_text(envoy.replace("\n#   127.0.0.1:9901 Envoy admin:", "\nadmin:", 1))
    result = yamllint(broken)
    assert result.returncode != 0 and "key-duplicates" in result.stdout, result.stdout
    long_line = tmp_path / "long.yaml"
    long_line.write_text("key: " + "word " * 30 + "\n")
    assert "line-length" in yamllint(long_line).stdout
