"""The Dockerfile, tested without a container engine: its structure, that everything it copies
exists and is in the build context, and that what it runs works — the package installed the way
the builder stage installs it (a wheel in a fresh virtual environment), its ENTRYPOINT + CMD, and
its HEALTHCHECK command against a live server."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
import sysconfig
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


def test_multi_stage_slim_final_image_without_build_tools() -> None:
    _, stages = parse()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert final.base == "python:3.11-slim"
    assert builder.base == final.base, "the venv's interpreter symlinks need the same base"
    run = " ".join(final.all("RUN"))
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in run, f"final stage installs {tool}"
    copies = final.all("COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies), copies


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
    parsed = build_parser().parse_args(cmd)
    assert parsed.command == "serve"
    ((_, sidecar),) = extauthz_containers("base")
    assert parsed.config == flag(sidecar["args"], "--config")
    assert parsed.http_address == flag(sidecar["args"], "--http-address")
    assert parsed.grpc_address.rpartition(":")[2] == flag(sidecar["args"], "--grpc-address")[-4:]
    assert parsed.grace_seconds == float(flag(sidecar["args"], "--grace-seconds"))
    exposed = {int(p) for p in final.last("EXPOSE").split()}
    assert exposed == {9001, 9090}
    # the health check asks the port CMD serves on
    health = healthcheck_command()
    assert f"127.0.0.1:{parsed.http_address.rpartition(':')[2]}/healthz" in health[-1]


def test_healthcheck_is_valid_python() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], "exec form, python: slim images have no curl"
    compile(command[2], "<HEALTHCHECK>", "exec")


@pytest.fixture(scope="module")
def image_like_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extauthz installed as the builder installs it: built as a wheel (not editable) into a
    fresh venv. Its dependencies come from the test environment through a .pth file (the image
    gets them from PyPI; no network here)."""
    root = tmp_path_factory.mktemp("image")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(REPO)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    venv = root / "opt-extauthz"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    (wheel,) = wheels.glob("extauthz-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-deps", str(wheel)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
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
    args = [
        {"0.0.0.0:9090": f"127.0.0.1:{http_port}", "0.0.0.0:9001": f"127.0.0.1:{grpc_port}"}.get(
            a, a
        )
        for a in cmd
    ]
    args[args.index("--config") + 1] = str(
        REPO / "deploy/k8s/components/extauthz-config/extauthz.yaml"
    )
    probe = healthcheck_command()
    code = probe[2].replace("127.0.0.1:9090", f"127.0.0.1:{http_port}")
    python = str(image_like_venv / "bin" / "python")

    def health() -> int:
        return subprocess.run(
            [python, "-c", code], capture_output=True, timeout=30, check=False
        ).returncode

    assert health() != 0, "healthy with nothing listening"
    with processes(tmp_path) as procs:
        procs.start("extauthz", [str(image_like_venv / "bin" / "extauthz"), *args])
        wait_for(f"http://127.0.0.1:{http_port}/healthz", procs)
        assert health() == 0
        assert http_get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200
        assert procs.stop("extauthz") == 0, procs.describe()
