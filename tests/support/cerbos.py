"""A real Cerbos PDP (AuthZEN) for tests: the static binary of the npm package
``@cerbos/cerbos-linux-x64`` that ``scripts/bootstrap`` unpacks under ``.venv/cerbos/<version>/``.

    server = CerbosServer(policy_dir, log_dir).start()   # waits for the AuthZEN metadata
    server.url                                           # http://127.0.0.1:PORT (its PDP id)
    server.stop()

Cerbos serves HTTP (AuthZEN, REST) and gRPC on two free loopback ports, reads YAML policies from
a directory (disk store) and runs with ``CERBOS_NO_TELEMETRY=1`` (it would otherwise call an
outside telemetry host). :func:`cerbos_binary` is None when bootstrap could not fetch it (no npm):
the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import os
from pathlib import Path

from extauthz.demo.envoy import REPO_ROOT
from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_ports, http_ok

#: pinned in scripts/bootstrap too
CERBOS_VERSION = "0.55.0"
STARTUP_TIMEOUT = 20.0


def cerbos_binary() -> Path | None:
    """The unpacked Cerbos binary, or None when bootstrap did not fetch it."""
    path = REPO_ROOT / ".venv" / "cerbos" / CERBOS_VERSION / "package" / "cerbos-linux-x64"
    return path if path.is_file() and os.access(path, os.X_OK) else None


class CerbosServer:
    """One Cerbos process serving the policies in ``policy_dir``."""

    def __init__(self, policy_dir: Path, log_dir: Path) -> None:
        binary = cerbos_binary()
        if binary is None:
            raise FileNotFoundError("Cerbos is not installed: run scripts/bootstrap (needs npm)")
        self.binary = binary
        self.policy_dir = policy_dir
        self.log_dir = log_dir
        self.http_port, self.grpc_port = free_ports(2)
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The PDP's base URL (what its AuthZEN metadata calls ``policy_decision_point``)."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self) -> CerbosServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self.log_dir / "cerbos.yaml"
        config.write_text(
            "server:\n"
            f'  httpListenAddr: "{LOOPBACK}:{self.http_port}"\n'
            f'  grpcListenAddr: "{LOOPBACK}:{self.grpc_port}"\n'
            "storage:\n"
            "  driver: disk\n"
            "  disk:\n"
            f"    directory: {self.policy_dir}\n"
            "    watchForChanges: false\n"
        )
        env = {**os.environ, "CERBOS_NO_TELEMETRY": "1"}
        self.process = ManagedProcess(
            "cerbos", [str(self.binary), "server", f"--config={config}"],
            self.log_dir / "cerbos.log", env=env).start()
        try:
            self.process.wait_ready(
                http_ok(self.url + "/.well-known/authzen-configuration"), STARTUP_TIMEOUT)
        except BaseException:
            self.process.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
