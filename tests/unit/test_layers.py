"""The import architecture holds: pyproject.toml's ``[tool.importlinter]`` contracts are kept.

* ``layers``: every module of extauthz sits in one layer (exhaustive) and imports only from the
  layers below its own; at most two imports may be excused (issue 15), today none is; the
  ``layers-*`` contracts do the same inside authz, config and config.schema;
* ``neutral-core``: nothing below the transport adapters imports gRPC, the protobuf wire types
  or the HTTP parser;
* ``acyclic``: no import cycle among the modules (or subpackages) of any package, bench/ too.

docs/architecture.md draws the layers.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import importlinter  # noqa: F401  (a test dependency: fail, never skip, when it is missing)

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))



def _lint(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_the_import_contracts_are_kept() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("extauthz is layered", "imports no gRPC", "no import cycle"):
        assert name in result.stdout


def test_at_most_two_imports_run_back_up_the_layers() -> None:
    contracts = _contracts()
    assert {"layers", "neutral-core", "acyclic"} <= set(contracts)
    layered = [c for c in contracts.values() if c["type"] == "layers"]
    assert contracts["layers"]["containers"] == ["extauthz"]
    assert all(c["exhaustive"] is True for c in layered)
    assert sum(len(c.get("ignore_imports", [])) for c in layered) <= 2
    assert not contracts["neutral-core"].get("ignore_imports")
    assert not contracts["acyclic"].get("ignore_imports")


def test_an_upward_import_or_a_cycle_breaks_the_contracts(tmp_path: Path) -> None:
    """The check bites: a package whose low layer imports its high one (and so makes a
    cycle) breaks both contract kinds, and lint-imports exits non-zero."""
    pkg = tmp_path / "toyhouse"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("from toyhouse import bottom\n")
    (pkg / "bottom.py").write_text("def f():\n    from toyhouse import top\n    return top\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = toyhouse\n\n"
        "[importlinter:contract:layers]\nname = toy layers\ntype = layers\n"
        "containers = toyhouse\nlayers =\n    top\n    bottom\n\n"
        "[importlinter:contract:acyclic]\nname = toy acyclic\ntype = acyclic_siblings\n"
        "ancestors = toyhouse\n")
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "toy layers BROKEN" in result.stdout
    assert "toy acyclic BROKEN" in result.stdout
    assert "toyhouse.bottom -> toyhouse.top" in result.stdout
