"""The Dockerfile, tested without a container engine: its structure (digest-pinned base, hashed
lock, no pip in the final image, OCI labels), that everything it copies exists and is in the build
context, and that what it runs works — the builder stage's RUN commands executed for real against
a copy of the build context (locked wheels with --require-hashes into a venv without pip, the
extauthz wheel built with the locked backend), its ENTRYPOINT + CMD from that venv, and its
HEALTHCHECK command against a live server on the port EXTAUTHZ_HTTP_ADDRESS names."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO, extauthz_containers, flag
from .podsim import free_port, http_get, processes, wait_for

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"no {keyword} in stage {self.name or self.base}"
        return values[-1]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """Dockerfile -> (global ARG defaults, stages), continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = words[0]
            for name, value in args.items():
                base = base.replace("${" + name + "}", value)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


def healthcheck_command() -> list[str]:
    _, stages = parse()
    options, _, command = stages[-1].last("HEALTHCHECK").partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return exec_form(command.strip())


#: python:3.11[.x]-slim[-bookworm]@sha256:<64 hex>: a tag for humans, the digest for the builder
PINNED_BASE = re.compile(r"^python:3\.11(\.\d+)?-slim(-bookworm)?@sha256:([0-9a-f]{64})$")


def test_multi_stage_slim_final_image_without_build_tools() -> None:
    _, stages = parse()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert PINNED_BASE.match(final.base), f"base not pinned by digest: {final.base}"
    assert builder.base == final.base, "the venv's interpreter symlinks need the same base"
    run = " ".join(final.all("RUN"))
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in run, f"final stage installs {tool}"
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/extauthz /opt/extauthz"], copies


def test_no_package_installer_in_the_final_image() -> None:
    """The venv the final image copies is created without pip, and the base's own pip,
    setuptools and wheel are uninstalled (then proven absent) in the final stage."""
    _, stages = parse()
    builder, final = stages[0], stages[-1]
    builder_run = " ".join(builder.all("RUN"))
    assert "python -m venv --without-pip /opt/extauthz" in builder_run
    assert "/opt/extauthz/bin/pip " not in builder_run, "the image venv must never get a pip"
    assert '! /opt/extauthz/bin/python -c "import pip"' in builder_run
    final_run = " ".join(final.all("RUN"))
    assert "python -m pip uninstall --yes --quiet pip setuptools wheel" in final_run
    assert '! python -c "import pip"' in final_run, "the removal is verified in the build"


def test_dependencies_come_from_the_hashed_lock_only() -> None:
    """Every pip install in the builder is --require-hashes -r <lock> or --no-deps (extauthz
    itself), wheels only; the extauthz wheel is built without build isolation (nothing unpinned
    fetched), with the backend from requirements/build.txt."""
    _, stages = parse()
    builder = stages[0]
    installs = [
        cmd.strip()
        for run in builder.all("RUN")
        for cmd in run.split("&&")
        if " install " in cmd or " wheel " in cmd
    ]
    assert installs
    locks = []
    for cmd in installs:
        assert "--no-deps" in cmd, cmd
        if " -r " in cmd:
            assert "--require-hashes" in cmd and "--only-binary=:all:" in cmd, cmd
            locks.append(cmd.split(" -r ")[1].split()[0])
        elif " wheel " in cmd:
            assert "--no-build-isolation" in cmd, cmd
        else:
            assert re.search(r"/wheels/extauthz-\*\.whl$", cmd), cmd
    assert sorted(locks) == ["requirements/build.txt", "requirements/runtime.txt"]
    for lock in locks:
        text = (REPO / lock).read_text()
        assert "--hash=sha256:" in text and "# Platform: CPython 3.11, linux x86_64" in text


def test_oci_labels() -> None:
    _, stages = parse()
    final = stages[-1]
    labels = dict(
        (key, value)
        for label in final.all("LABEL")
        for key, _, value in (w.partition("=") for w in shlex.split(label))
    )
    for key in ("title", "description", "version", "revision", "licenses", "base.name",
                "base.digest"):  # fmt: skip
        assert labels.get(f"org.opencontainers.image.{key}"), key
    digest = PINNED_BASE.match(final.base).group(3)  # type: ignore[union-attr]
    assert labels["org.opencontainers.image.base.digest"] == f"sha256:{digest}"
    tag = final.base.partition("@")[0]
    assert labels["org.opencontainers.image.base.name"].endswith("/" + tag)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "ARG VERSION=" + project["version"] in DOCKERFILE.read_text()
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_runs_as_the_manifests_non_root_user() -> None:
    _, stages = parse()
    final = stages[-1]
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert "--uid 10001" in " ".join(final.all("RUN"))
    for _, container in [c for name in ("base", "shared") for c in extauthz_containers(name)]:
        assert container["securityContext"]["runAsUser"] == int(uid)
        assert container["securityContext"]["runAsGroup"] == int(gid)


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here (last match wins, `!` re-includes)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex_pattern = pattern.replace("**/", "*")
        if any(fnmatch.fnmatch(p, regex_pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    _, stages = parse()
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if copy.startswith("--from="):
                continue
            sources.extend(words[:-1])
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" in relative:
                continue
            assert not _ignored(relative, patterns), f"{relative} is excluded by .dockerignore"
    # ...and what must stay out, does
    for private in (".venv/bin/python", ".git/config", "tests/deploy/conftest.py"):
        assert _ignored(private, patterns), private


def test_cmd_uses_the_manifests_defaults() -> None:
    from extauthz.cli import build_parser

    _, stages = parse()
    final = stages[-1]
    assert exec_form(final.last("ENTRYPOINT")) == ["extauthz"]
    cmd = exec_form(final.last("CMD"))
    assert "--http-address" not in cmd, "EXTAUTHZ_HTTP_ADDRESS is the one setting"
    parsed = build_parser(environ=final_env()).parse_args(cmd)
    assert parsed.command == "serve"
    ((_, sidecar),) = extauthz_containers("base")
    assert parsed.config == flag(sidecar["args"], "--config")
    assert parsed.http_address == flag(sidecar["args"], "--http-address")
    assert parsed.grpc_address.rpartition(":")[2] == flag(sidecar["args"], "--grpc-address")[-4:]
    assert parsed.grace_seconds == float(flag(sidecar["args"], "--grace-seconds"))
    exposed = {int(p) for p in final.last("EXPOSE").split()}
    assert exposed == {9001, 9090}
    # the health check asks the port of EXTAUTHZ_HTTP_ADDRESS, which is what CMD serves on
    assert final_env()["EXTAUTHZ_HTTP_ADDRESS"] == parsed.http_address == "0.0.0.0:9090"
    health = healthcheck_command()
    assert "os.environ.get('EXTAUTHZ_HTTP_ADDRESS'" in health[-1]
    assert "9090" not in health[-1].replace("':9090'", ""), "the only port is the default"


def final_env() -> dict[str, str]:
    """The final stage's ENV (KEY=value form)."""
    _, stages = parse()
    env: dict[str, str] = {}
    for line in stages[-1].all("ENV"):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def test_healthcheck_is_valid_python() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], "exec form, python: slim images have no curl"
    compile(command[2], "<HEALTHCHECK>", "exec")


@pytest.fixture(scope="module")
def image_like_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage run for real: its RUN commands, with /opt and /wheels moved into a
    temporary directory, in a copy of the build context (only what the Dockerfile COPYs).
    Packages come from the index pip is configured with (PyPI, or a local mirror); the
    hashes in the lock decide whether they are accepted."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    _, stages = parse()
    builder = stages[0]
    for copy in builder.all("COPY"):
        *sources, _dest = [w for w in shlex.split(copy) if not w.startswith("--")]
        for source in sources:
            target = context / source
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
            else:
                shutil.copy(REPO / source, target)
    python_dir = root / "python-bin"
    python_dir.mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable))
    (python_dir / "python").symlink_to(base)
    env = {**os.environ, "PATH": f"{python_dir}:{os.environ['PATH']}"}
    for name, _, value in (w.partition("=") for env_line in builder.all("ENV")
                           for w in shlex.split(env_line)):  # fmt: skip
        env[name] = value
    for run in builder.all("RUN"):
        command = run.replace("/opt/", f"{root}/opt/").replace("/wheels", f"{root}/wheels")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=context, env=env,
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    venv = root / "opt" / "extauthz"
    assert not list(venv.glob("lib/python3*/site-packages/pip")), "pip in the image venv"
    return venv


def test_entrypoint_works_from_a_non_editable_install(
    image_like_venv: Path, tmp_path: Path
) -> None:
    entrypoint = image_like_venv / "bin" / "extauthz"
    for args in (["--help"], ["serve", "--help"]):
        result = subprocess.run(
            [str(entrypoint), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    python = str(image_like_venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import extauthz; print(extauthz.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert str(image_like_venv) in where.stdout, "imported the source tree, not the install"


def test_healthcheck_passes_against_a_running_server_and_fails_without_one(
    image_like_venv: Path, tmp_path: Path
) -> None:
    _, stages = parse()
    cmd = exec_form(stages[-1].last("CMD"))
    http_port, grpc_port = free_port(), free_port()
    args = [{"0.0.0.0:9001": f"127.0.0.1:{grpc_port}"}.get(a, a) for a in cmd]
    args[args.index("--config") + 1] = str(
        REPO / "deploy/k8s/components/extauthz-config/extauthz.yaml"
    )
    probe = healthcheck_command()
    python = str(image_like_venv / "bin" / "python")
    # the image's ENV (PATH aside), with the test's address: the server and the probe both take
    # the port from EXTAUTHZ_HTTP_ADDRESS, as in the image
    image_env = {k: v for k, v in final_env().items() if k != "PATH"}
    image_env["EXTAUTHZ_HTTP_ADDRESS"] = f"127.0.0.1:{http_port}"
    env = {**os.environ, **image_env}

    def health() -> int:
        return subprocess.run(
            [python, "-c", probe[2]], capture_output=True, timeout=30, check=False, env=env
        ).returncode

    assert health() != 0, "healthy with nothing listening"
    with processes(tmp_path) as procs:
        procs.start("extauthz", [str(image_like_venv / "bin" / "extauthz"), *args], env=image_env)
        wait_for(f"http://127.0.0.1:{http_port}/healthz", procs)
        assert health() == 0
        assert http_get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200
        assert procs.stop("extauthz") == 0, procs.describe()
