"""The hashed lock files agree with pyproject.toml: every dependency (runtime, the test extra,
the build backend) is pinned at a version its specifier allows, with hashes, and every
dependency in pyproject.toml has an upper bound. CI's install (scripts/bootstrap) and the image
(Dockerfile) install from these files; a dependency edited in pyproject.toml without running
scripts/lock fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO

LOCKS = REPO / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(path: Path) -> dict[str, Version]:
    """{canonical name: pinned version}; every pin must carry at least one sha256 hash."""
    pins: dict[str, Version] = {}
    current: str | None = None
    hashes: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = Version(match.group(2))
            hashes[current] = 0
        elif stripped.startswith("--hash=sha256:"):
            assert current, f"{path.name}: hash before any pin"
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", stripped), stripped
            hashes[current] += 1
        else:
            pytest.fail(f"{path.name}: not a pin or a hash: {line!r}")
    assert pins, path
    assert all(hashes.values()), f"{path.name}: pins without hashes: {hashes}"
    return pins


def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def disagreements(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    """Every requirement (and what its extras pull in is the lock's business) pinned at a
    version inside its specifier."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: lock has {pins[name]}, pyproject wants {req.specifier}")
    return problems


def test_runtime_lock_satisfies_the_project_dependencies() -> None:
    deps = pyproject()["project"]["dependencies"]
    assert disagreements(deps, read_lock(LOCKS / "runtime.txt")) == []


def test_test_lock_satisfies_runtime_and_test_dependencies() -> None:
    project = pyproject()["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    assert disagreements(deps, read_lock(LOCKS / "test.txt")) == []


def test_build_lock_satisfies_the_build_system() -> None:
    requires = pyproject()["build-system"]["requires"]
    assert disagreements(requires, read_lock(LOCKS / "build.txt")) == []


def test_runtime_and_test_locks_pin_the_same_versions() -> None:
    """CI tests what the image ships: a package in both files has one version."""
    runtime, test = read_lock(LOCKS / "runtime.txt"), read_lock(LOCKS / "test.txt")
    assert set(runtime) <= set(test), set(runtime) - set(test)
    assert {n: v for n, v in test.items() if n in runtime} == runtime


def test_every_dependency_has_an_upper_bound() -> None:
    project = pyproject()["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    bounding = {"<", "<=", "==", "~=", "==="}
    unbounded = [
        f"{group}: {text}"
        for group, reqs in groups.items()
        for text in reqs
        if not any(spec.operator in bounding for spec in Requirement(text).specifier)
    ]
    assert unbounded == []


def test_the_check_catches_a_lock_that_disagrees(tmp_path: Path) -> None:
    pins = read_lock(LOCKS / "runtime.txt")
    assert disagreements(["protobuf>=99"], pins) == [
        f"protobuf: lock has {pins['protobuf']}, pyproject wants >=99"
    ]
    assert disagreements(["not-a-locked-package>=1"], pins) == [
        "not-a-locked-package: not in the lock"
    ]
    unhashed = tmp_path / "unhashed.txt"
    unhashed.write_text("protobuf==7.36.2\n")
    with pytest.raises(AssertionError, match="without hashes"):
        read_lock(unhashed)


def test_ci_and_the_image_install_from_the_lock() -> None:
    bootstrap = (REPO / "scripts" / "bootstrap").read_text()
    assert "--require-hashes --no-deps -r requirements/test.txt" in bootstrap
    assert "install --quiet --no-deps -e ." in bootstrap
    stamp = next(line for line in bootstrap.splitlines() if line.startswith("stamp="))
    assert "pyproject.toml" in stamp and "requirements/test.txt" in stamp, stamp
    dockerfile = (REPO / "Dockerfile").read_text()
    locked = "--require-hashes --no-deps --only-binary=:all: -r requirements/runtime.txt"
    assert locked in dockerfile
