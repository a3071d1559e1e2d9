"""Run a rendered pod's processes on this machine, the way the kubelet would lay them out.

No container engine runs here, so the deployment tests do the next best thing: take the objects
kustomize rendered, write each volume the way the kubelet writes it (AtomicWriter: the files in a
timestamped ``..<date>`` directory, a ``..data`` symlink to it, and one symlink per file through
``..data``), and start each container's command from its own args, with only the ports rewritten
to free ones on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .conftest import build, config_data


def write_kubelet_volume(directory: Path, files: Mapping[str, str]) -> Path:
    """Lay ``files`` out like a ConfigMap/Secret/projected volume mounted at ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "..2030_01_01_00_00_00.000000001"
    stamp.mkdir()
    for name, content in files.items():
        (stamp / name).write_text(content)
    (directory / "..data").symlink_to(stamp.name)
    for name in files:
        (directory / name).symlink_to(Path("..data") / name)
    return directory


def volume_files(name: str, deployment: dict[str, Any], volume_name: str) -> dict[str, str]:
    """The files of one volume of a rendered Deployment (configMap, secret or projected)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in build(name)}
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == volume_name
    ]
    sources = volume["projected"]["sources"] if "projected" in volume else [volume]
    files: dict[str, str] = {}
    for source in sources:
        if "configMap" in source:
            files.update(config_data(by_name[("ConfigMap", source["configMap"]["name"])]))
        else:
            secret = source["secret"]
            files.update(
                config_data(by_name[("Secret", secret.get("name") or secret["secretName"])])
            )
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rewrite_address(address: str, ports: Mapping[int, int]) -> str:
    """``HOST:PORT`` with the port mapped and any host moved to 127.0.0.1 (loopback only here)."""
    _, _, port = address.rpartition(":")
    return f"127.0.0.1:{ports[int(port)]}"


def rewrite_args(
    args: list[str], replacements: Mapping[str, str], ports: Mapping[int, int]
) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous in ("--grpc-address", "--http-address"):
            out.append(rewrite_address(arg, ports))
        else:
            out.append(replacements.get(arg, arg))
    return out


def rewrite_envoy(node: Any, ports: Mapping[int, int]) -> Any:
    """Every socket_address of an Envoy config moved to 127.0.0.1 and a mapped port."""
    if isinstance(node, dict):
        if "port_value" in node and "address" in node:
            return {**node, "address": "127.0.0.1", "port_value": ports[node["port_value"]]}
        return {k: rewrite_envoy(v, ports) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite_envoy(v, ports) for v in node]
    return node


class Processes:
    """Started processes, stopped (and their logs kept) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def stop(self, name: str, timeout: float = 15) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def describe(self) -> str:
        out = []
        for name in self.procs:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            out.append(f"--- {name} (rc={self.procs[name].poll()}) ---\n{text[-2500:]}")
        return "\n".join(out)


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(url: str, procs: Processes, status: int = 200, deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        for name, proc in procs.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited early\n{procs.describe()}")
        try:
            got, _ = http_get(url, timeout=1)
            if got == status:
                return
            last = got
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status} (last: {last})\n{procs.describe()}")
