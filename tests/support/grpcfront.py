"""Looking at a running gRPC front (``serve --grpc-server envoy``) from outside: its Envoy child,
its private directory, the TCP ports the pair listens on, and grpcio blocked from a child."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

#: the log line extauthz writes once the front serves (extauthz/grpcfront/front.py)
_SERVES = re.compile(r"gRPC front: Envoy pid (\d+) serves gRPC on \S+ \(bridged to (\S+)\)")

#: a ``sitecustomize`` that makes ``import grpc`` / ``import grpc_health`` fail in a child, as if
#: grpcio were not installed (put its directory first on the child's PYTHONPATH)
BLOCK_GRPC = '''
import importlib.abc
import sys


class _NoGrpc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grpc", "grpc_health"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _NoGrpc())
'''


def serve_without_grpcio(tmp_path: Path) -> tuple[dict[str, str], list[str], int, int]:
    """``(env, argv, grpc_port, http_port)``: an environment in which ``import grpc`` fails
    (checked here: the block really applies) and an ``extauthz serve`` command line for it
    (the abuse tests' configuration, loopback ports); add ``--grpc-server ...`` to ``argv``."""
    from extauthz.demo.procs import LOOPBACK, free_ports
    from tests.support.abuse import CONFIG
    from tests.support.processes import write_config

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_GRPC)
    env = dict(os.environ) | {"PYTHONPATH": os.pathsep.join(
        [str(blocker), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run([sys.executable, "-c", "import grpc"], env=env,
                           capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode != 0  # the block really applies in that environment
    config = tmp_path / "extauthz.yaml"
    write_config(config, CONFIG)
    grpc_port, http_port = free_ports(2)
    argv = [sys.executable, "-m", "extauthz", "serve", "--config", str(config),
            "--grpc-address", f"{LOOPBACK}:{grpc_port}", "--http-address",
            f"{LOOPBACK}:{http_port}"]
    return env, argv, grpc_port, http_port


def front_of(log_text: str) -> tuple[int, Path]:
    """The (last) Envoy child PID and the bridged socket path from extauthz's log."""
    found = _SERVES.findall(log_text)
    assert found, "no 'gRPC front: ... serves' line in the log"
    pid, socket_path = found[-1]
    return int(pid), Path(socket_path)


def children(pid: int) -> list[int]:
    """Direct child PIDs of ``pid`` (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited; False at ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_listen_ports(pids: Iterable[int]) -> set[int]:
    """The TCP ports (IPv4 and IPv6) the processes ``pids`` listen on."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def rss_anon_mib(pid: int) -> float:
    """Anonymous resident memory of ``pid`` (MiB): what a flood can grow (the binary's
    file-backed pages do not count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0
