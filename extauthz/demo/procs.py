"""Child processes for the demo and the end-to-end tests: ports, start, readiness, stop.

Rules this module enforces, because a leaked Envoy on a CI box poisons every later run:

* every child is started in its own session with its output in a log file;
* it is stopped by its PID only: SIGTERM, a bounded wait, then SIGKILL (never by name);
* readiness is polled with a deadline, and a child that exits early or never becomes ready raises
  :class:`ProcessError` carrying the tail of its log.

``tests/support/processes.py`` re-exports this module for the test suite.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from extauthz.parentdeath import AVAILABLE, die_with_parent

LOOPBACK = "127.0.0.1"


class ProcessError(RuntimeError):
    """A child process failed to start, died, or never became ready."""


class PortInUse(ProcessError):
    """A port the caller needs is already taken."""


# -- ports -------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free on ``host`` right now (the kernel picks it).

    There is a window between this call and the child binding the port; the kernel hands out
    ephemeral ports round-robin, so a collision needs another process to bind the very same
    port in that window.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports (all held open until every one is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same options as the servers we start: a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def require_free_ports(ports: Mapping[str, int], host: str = LOOPBACK) -> None:
    """Raise :class:`PortInUse` naming every taken port (``{"Envoy listener": 10000, ...}``)."""
    taken = [f"{what} {host}:{port}" for what, port in ports.items() if port_in_use(port, host)]
    if taken:
        raise PortInUse(
            "port(s) already in use: "
            + ", ".join(taken)
            + " (is another demo running? find it with `ss -ltnp` and stop it)"
        )


# -- readiness probes --------------------------------------------------------------------------


def http_status(url: str, timeout: float = 0.5) -> int | None:
    """The HTTP status of ``GET url``, or None when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http only)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def http_ok(url: str, timeout: float = 0.5) -> Callable[[], bool]:
    """A readiness probe: ``GET url`` answers 200."""
    return lambda: http_status(url, timeout) == 200


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- processes ---------------------------------------------------------------------------------


#: the kernel SIGTERMs the child when the demo dies, so a crashed demo or a killed pytest
#: does not leave Envoy and extauthz holding their ports
_die_with_parent = die_with_parent(signal.SIGTERM)


class ManagedProcess:
    """One child process with its log file; stopped by PID with a timeout.

    >>> proc = ManagedProcess("extauthz", [...], log_path).start()
    >>> proc.wait_ready(http_ok("http://127.0.0.1:9090/readyz"), timeout=10)
    >>> proc.stop()
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def start(self) -> ManagedProcess:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        log.flush()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                # Own session: a Ctrl-C in the demo's terminal reaches only the demo, which then
                # stops its children in order, by PID.
                start_new_session=True,
                preexec_fn=_die_with_parent if AVAILABLE else None,
            )
        except OSError as exc:
            log.close()
            raise ProcessError(f"cannot start {self.name}: {exc}") from exc
        self._log = log
        return self

    def wait_ready(
        self, probe: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05
    ) -> None:
        """Poll ``probe`` until it returns True; raise ProcessError (with the log tail) if the
        process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise ProcessError(
                    f"{self.name} exited with code {self.returncode} before becoming ready\n"
                    + self.log_tail()
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:.1f}s\n"
                    + self.log_tail()
                )
            time.sleep(interval)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's PID (no-op once it has exited)."""
        if self.running and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code. Idempotent."""
        popen = self.popen
        if popen is None:
            return None
        try:
            if popen.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    popen.wait(5)
            return popen.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """SIGKILL by PID (simulates a crash) and reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        header = f"----- last {len(text)} lines of {self.name} log ({self.log_path}) -----"
        return "\n".join([header, *text, "-" * len(header)])

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, running={self.running})"


# -- extauthz ----------------------------------------------------------------------------------


def extauthz_argv(
    config: str | Path,
    grpc_address: str,
    http_address: str,
    *,
    log_level: str = "INFO",
    python: str = sys.executable,
) -> list[str]:
    """The command line of ``python -m extauthz serve`` (the module form needs no PATH)."""
    return [
        python, "-m", "extauthz", "--log-level", log_level,
        "serve", "--config", str(config),
        "--grpc-address", grpc_address, "--http-address", http_address,
    ]  # fmt: skip


def start_extauthz(
    config: str | Path,
    *,
    grpc_port: int,
    http_port: int,
    log_path: str | Path,
    host: str = LOOPBACK,
    timeout: float = 15.0,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """Start ``extauthz serve`` (with ``extra_args``) and wait until ``/readyz`` answers 200."""
    proc = ManagedProcess(
        "extauthz",
        [*extauthz_argv(config, f"{host}:{grpc_port}", f"{host}:{http_port}",
                        log_level=log_level), *extra_args],
        log_path,
        env=env,
    ).start()
    try:
        proc.wait_ready(http_ok(f"http://{host}:{http_port}/readyz"), timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
