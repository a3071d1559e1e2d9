"""Steady load, configuration churn and process measurements for the resilience e2e tests.

* :class:`LoadLoop` — N client threads sending requests through Envoy, bounded in count and
  time, each on a keep-alive connection of its own, recording one :class:`Sample` per request
  (or only counting, for long soaks).
* :class:`ConfigMapDir` — a directory laid out the way the kubelet mounts a ConfigMap or Secret
  (``name -> ..data/name``, ``..data -> ..<timestamp>``), updated the way the kubelet updates it
  (a new timestamped directory, then a ``..data`` symlink renamed over the old one), or written
  in place like an editor would.
* :func:`spawn_extauthz` / :func:`start_stack_with` — the e2e stack with extra ``serve`` flags
  (``--watch-interval``, ``--grace-seconds``), which :func:`tests.support.processes.start_stack`
  cannot pass.
* :func:`rss_bytes`, :func:`metric` — a process's resident memory, one Prometheus sample.
"""

from __future__ import annotations

import http.client
import itertools
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from extauthz.demo.httpclient import Response
from tests.support.envoy import EnvoyPorts, start_envoy, write_envoy_config
from tests.support.processes import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ManagedProcess,
    Stack,
    free_ports,
    http_ok,
)

__all__ = [
    "ConfigMapDir",
    "LoadLoop",
    "Request",
    "Sample",
    "metric",
    "rss_bytes",
    "spawn_extauthz",
    "start_stack_with",
]


# -- processes ---------------------------------------------------------------------------------


def spawn_extauthz(
    config: Path,
    *,
    grpc_port: int,
    http_port: int,
    log_path: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start ``python -m extauthz serve`` with ``extra_args``; does *not* wait for readiness."""
    argv = [
        sys.executable, "-m", "extauthz", "--log-level", "INFO", "serve",
        "--config", str(config),
        "--grpc-address", f"{LOOPBACK}:{grpc_port}",
        "--http-address", f"{LOOPBACK}:{http_port}",
        *extra_args,
    ]  # fmt: skip
    merged = {**os.environ, **(env or {})}
    return ManagedProcess("extauthz", argv, log_path, env=merged).start()


def start_stack_with(
    config: Path,
    *,
    echo_port: int,
    log_dir: Path,
    extra_args: Sequence[str] = (),
    ext_authz_timeout: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Stack:
    """:func:`tests.support.processes.start_stack` with extra ``serve`` flags for extauthz.

    (``Stack.start_extauthz`` restarts it *without* them.)"""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener, admin, grpc_port, http_port = free_ports(4)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=grpc_port, echo=echo_port)
    envoy_config = write_envoy_config(
        log_dir / "envoy.yaml", ports, ext_authz_timeout=ext_authz_timeout
    )
    extauthz = spawn_extauthz(
        config, grpc_port=grpc_port, http_port=http_port, log_path=log_dir / "extauthz.log",
        extra_args=extra_args, env=env,
    )  # fmt: skip
    try:
        extauthz.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), timeout)
        envoy = start_envoy(
            envoy_config, admin_port=admin, log_path=log_dir / "envoy.log", timeout=timeout
        )
    except BaseException:
        extauthz.stop()
        raise
    return Stack(
        config=config, ports=ports, http_port=http_port, log_dir=log_dir, extauthz=extauthz,
        envoy=envoy, envoy_config=envoy_config, timeout=timeout,
    )  # fmt: skip


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` in ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus exposition
    (0.0 when absent: a counter that never moved has no sample)."""
    wanted = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return 0.0


# -- ConfigMap-style directory ------------------------------------------------------------------


class ConfigMapDir:
    """A directory laid out and updated like a kubelet-mounted ConfigMap/Secret volume."""

    def __init__(self, directory: Path, files: Mapping[str, str]) -> None:
        self.directory = directory
        self._stamps = itertools.count(1)
        directory.mkdir(parents=True, exist_ok=True)
        target = self._write_stamp(files)
        (directory / "..data").symlink_to(target.name)
        for name in files:
            (directory / name).symlink_to(Path("..data") / name)

    def path(self, name: str) -> Path:
        """The path an application is told to read (``dir/name``, a symlink)."""
        return self.directory / name

    def _write_stamp(self, files: Mapping[str, str]) -> Path:
        stamp = self.directory / f"..2030_01_01_00_00_00.{next(self._stamps):09d}"
        stamp.mkdir()
        for name, content in files.items():
            (stamp / name).write_text(content)
        return stamp

    def swap(self, files: Mapping[str, str]) -> None:
        """The kubelet's atomic update: write every file into a new timestamped directory,
        point ``..data_tmp`` at it, rename it over ``..data``, remove the old directory."""
        old = (self.directory / "..data").resolve()
        stamp = self._write_stamp(files)
        tmp = self.directory / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.replace(tmp, self.directory / "..data")
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        shutil.rmtree(old)

    def write_in_place(self, name: str, content: str) -> None:
        """An editor-style update: truncate and rewrite the file the symlinks point at."""
        with self.path(name).open("w") as fh:
            fh.write(content)


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request a client thread sends (``kind`` names it in the results)."""

    kind: str
    path: str
    headers: Sequence[tuple[str, str]] = ()
    method: str = "GET"
    body: bytes | None = None


@dataclass(frozen=True)
class Sample:
    """One request and its outcome; ``status`` 0 means a transport error (``error`` says which).
    ``start``/``end`` are ``time.monotonic()`` around the whole exchange."""

    kind: str
    start: float
    end: float
    status: int
    reason: str | None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """``"200"`` or ``"401:missing_credential"`` (status and extauthz reason code)."""
        return f"{self.status}:{self.reason}" if self.reason else str(self.status)


class _Client:
    """A keep-alive HTTP/1.1 connection to Envoy's listener (reconnects when Envoy closes it)."""

    def __init__(self, port: int, timeout: float) -> None:
        self._port = port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _once(self, req: Request) -> Response:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=self._timeout)
        conn = self._conn
        conn.putrequest(req.method, req.path, skip_accept_encoding=True)
        for name, value in req.headers:
            conn.putheader(name, value)
        if req.body is not None:
            conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(req.body)
        resp = conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.close()
        return Response(resp.status, tuple((k.lower(), v) for k, v in resp.getheaders()), data)

    def send(self, req: Request) -> Response:
        """Send ``req``. A reused connection the server closed while idle is retried once on a
        fresh one (what every HTTP client does); any other failure raises."""
        reused = self._conn is not None
        try:
            return self._once(req)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            self.reconnects += 1
            return self._once(req)
        except BaseException:
            self.close()
            raise


@dataclass
class LoadResult:
    """What a :class:`LoadLoop` observed."""

    samples: list[Sample] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    errors: list[Sample] = field(default_factory=list)  # transport errors and 5xx
    requests: int = 0
    reconnects: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class LoadLoop:
    """``clients`` threads, each sending ``make(client, seq)`` through Envoy in a loop until
    :meth:`stop`, ``max_seconds`` or ``max_requests`` (in total) — whichever comes first.

    ``keep_samples=False`` only counts (outcomes, errors): for long soaks.
    """

    def __init__(
        self,
        port: int,
        make: Callable[[int, int], Request],
        *,
        clients: int = 4,
        max_seconds: float = 60.0,
        max_requests: int = 1_000_000,
        keep_samples: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self._port = port
        self._make = make
        self._clients = clients
        self._max_seconds = max_seconds
        self._max_requests = max_requests
        self._keep = keep_samples
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.result = LoadResult()

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> int:
        with self._lock:
            return self.result.requests

    def start(self) -> LoadLoop:
        self._started = time.monotonic()
        for index in range(self._clients):
            thread = threading.Thread(
                target=self._run, args=(index,), name=f"load-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> LoadResult:
        """Stop the clients (each finishes its current request) and return the result."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load threads did not stop: {alive}")
        with self._lock:
            self.result.seconds = time.monotonic() - self._started
            self.result.samples.sort(key=lambda s: s.start)
        return self.result

    def _record(self, sample: Sample) -> None:
        with self._lock:
            result = self.result
            if self._keep:
                result.samples.append(sample)
            result.outcomes[(sample.kind, sample.outcome)] += 1
            if sample.status == 0 or sample.status >= 500:
                result.errors.append(sample)

    def _claim(self) -> bool:
        with self._lock:
            if self.result.requests >= self._max_requests:
                return False
            self.result.requests += 1
            return True

    def _run(self, index: int) -> None:
        client = _Client(self._port, self._timeout)
        deadline = self._started + self._max_seconds
        try:
            for seq in itertools.count():
                if self._stop.is_set() or time.monotonic() >= deadline or not self._claim():
                    break
                req = self._make(index, seq)
                start = time.monotonic()
                try:
                    resp = client.send(req)
                except (OSError, http.client.HTTPException) as exc:
                    self._record(
                        Sample(req.kind, start, time.monotonic(), 0, None, repr(exc)[:200])
                    )
                    continue
                reason = resp.reason if resp.status != 200 else None
                self._record(Sample(req.kind, start, time.monotonic(), resp.status, reason))
        finally:
            client.close()
            with self._lock:
                self.result.reconnects += client.reconnects


def counts(samples: Iterable[Sample]) -> Counter[tuple[str, str]]:
    """(kind, outcome) -> how many."""
    return Counter((s.kind, s.outcome) for s in samples)
