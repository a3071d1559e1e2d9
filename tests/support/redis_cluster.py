"""A real Redis Cluster for tests: three Debian ``redis-server --cluster-enabled yes`` masters on
127.0.0.1 free ports, joined with ``redis-cli --cluster create ... --cluster-replicas 0``.

Needs the Debian ``redis-server`` and ``redis-tools`` packages (``scripts/bootstrap`` installs
them when missing). Usage::

    with RedisCluster(tmp_path) as cluster:
        cluster.url            # redis://127.0.0.1:PORT (any node; clients discover the others)
        cluster.ports

Every node is a :class:`~extauthz.demo.procs.ManagedProcess` (stopped by PID). Memory only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from extauthz.demo.procs import LOOPBACK, ManagedProcess, ProcessError, free_ports
from tests.support.redis_server import ping

NODES = 3


def binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` from PATH (ProcessError when absent)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ProcessError("redis-server / redis-cli not installed (scripts/bootstrap installs "
                           "the Debian redis-server and redis-tools packages)")
    return server, cli


class RedisCluster:
    """Three cluster-enabled nodes, joined (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        ports = free_ports(2 * NODES)
        self.ports = ports[:NODES]
        #: the cluster bus ports, explicit (the default, port + 10000, may be taken or > 65535)
        self.bus_ports = ports[NODES:]
        self._nodes: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.ports[0]}"

    def start(self, timeout: float = 20.0) -> RedisCluster:
        server, cli = binaries()
        try:
            for port, bus in zip(self.ports, self.bus_ports, strict=True):
                node_dir = self.data_dir / f"node-{port}"
                node_dir.mkdir(parents=True, exist_ok=True)
                argv = [server, "--bind", LOOPBACK, "--port", str(port), "--dir", str(node_dir),
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(bus),
                        "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no",
                        "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
                proc = ManagedProcess(f"redis-cluster-{port}", argv, node_dir / "redis.log")
                self._nodes.append(proc.start())
                proc.wait_ready(lambda p=port: ping(p), timeout=timeout, interval=0.02)
            create = [cli, "--cluster", "create",
                      *(f"{LOOPBACK}:{p}" for p in self.ports),
                      "--cluster-replicas", "0", "--cluster-yes"]
            result = subprocess.run(create, capture_output=True, text=True, timeout=timeout,
                                    check=False)
            if result.returncode != 0:
                raise ProcessError(f"redis-cli --cluster create failed: {result.stdout[-500:]}"
                                   f"{result.stderr[-500:]}")
            self._wait_ok(cli, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, cli: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [subprocess.run([cli, "-h", LOOPBACK, "-p", str(p), "cluster", "info"],
                                     capture_output=True, text=True, timeout=5, check=False)
                      .stdout for p in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise ProcessError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        nodes, self._nodes = self._nodes, []
        for node in nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
