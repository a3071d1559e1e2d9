"""Abusive clients and a normal client that measures itself meanwhile (issue 13 tests).

* :func:`start_server` — ``extauthz serve`` with gRPC, the HTTP ext_authz transport and admin on
  free ports, extra flags, optionally under a hard ``RLIMIT_NOFILE`` (via ``prlimit``).
* :class:`NormalClient` — a thread that keeps sending what a healthy deployment sends: a gRPC
  ``Check`` on a long-lived channel, an HTTP-transport check on a keep-alive connection, and a
  ``/healthz`` on a new connection each time; records every latency and every failure.
* :func:`p99` and :func:`rss_mib`.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_ports, http_ok
from extauthz.keys import hash_api_key
from tests.support.load import rss_bytes
from tests.support.processes import write_config

API_KEY = "eak_bounds-test-key-0123456789abcdef"
#: a route whose check decides at once (API key), on both transports
CONFIG = {
    "version": 1,
    "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
    "consumers": [{"name": "normal", "keys": [{"id": "k1", "hash": hash_api_key(API_KEY)}]}],
    "routes": [{"name": "api", "match": {"prefix": "/api/"}, "authn": ["keys"]}],
}


@dataclass
class Server:
    """A running ``extauthz serve`` and its ports."""

    proc: ManagedProcess
    grpc_port: int
    http_port: int  # admin
    authz_port: int  # HTTP ext_authz

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def metrics(self) -> str:
        conn = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.stop()


def start_server(tmp: Path, extra_args: Sequence[str] = (), *, nofile: int | None = None,
                 config: dict[str, object] | None = None, log_level: str = "INFO") -> Server:
    """Start extauthz (both transports + admin) and wait until ready."""
    path = write_config(tmp / "extauthz.yaml", config or CONFIG)
    grpc_port, http_port, authz_port = free_ports(3)
    argv = [sys.executable, "-m", "extauthz", "--log-level", log_level, "serve",
            "--config", str(path), "--grpc-address", f"{LOOPBACK}:{grpc_port}",
            "--http-address", f"{LOOPBACK}:{http_port}",
            "--http-authz-address", f"{LOOPBACK}:{authz_port}", "--no-decision-log",
            *extra_args]
    if nofile is not None:
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
    proc = ManagedProcess("extauthz", argv, tmp / "extauthz.log").start()
    try:
        proc.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), 20)
    except BaseException:
        proc.stop()
        raise
    return Server(proc, grpc_port, http_port, authz_port)


def check_request(path: str = "/api/x") -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = "GET", path, "api.example.com", "http"
    http.headers.update({":method": "GET", ":path": path, ":authority": "api.example.com",
                         "x-api-key": API_KEY})
    return req


def http_check_bytes(path: str = "/api/x") -> bytes:
    """One HTTP ext_authz request as Envoy sends it (allowed by :data:`CONFIG`)."""
    return (f"GET /check{path} HTTP/1.1\r\nhost: api.example.com\r\nx-api-key: {API_KEY}\r\n"
            "content-length: 0\r\n\r\n").encode()


@dataclass
class Samples:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, what: str) -> None:
        self.failures.setdefault(kind, []).append(what)

    def summary(self) -> str:
        parts = [f"{k}: n={len(v)} p50={p(v, 50) * 1000:.1f}ms p99={p99(v) * 1000:.1f}ms "
                 f"max={max(v) * 1000:.1f}ms" for k, v in sorted(self.latencies.items())]
        parts += [f"{k} failures: {len(v)} ({v[:3]})" for k, v in sorted(self.failures.items())]
        return "; ".join(parts)


def p(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


def p99(values: Sequence[float]) -> float:
    return p(values, 99)


class NormalClient:
    """A well-behaved client of all three ports, measuring itself (see module docstring)."""

    def __init__(self, server: Server, interval: float = 0.02, timeout: float = 5.0,
                 http_transport: bool = True, healthz: bool = True) -> None:
        self.server = server
        self.interval = interval
        self.timeout = timeout
        self.http_transport = http_transport
        self.healthz = healthz
        self.samples = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="normal-client", daemon=True)

    def __enter__(self) -> NormalClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def _timed(self, kind: str, call: object) -> None:
        started = time.perf_counter()
        try:
            call()  # type: ignore[operator]
        except Exception as exc:
            self.samples.fail(kind, f"{type(exc).__name__}: {exc}"[:120])
        else:
            self.samples.add(kind, time.perf_counter() - started)

    def _run(self) -> None:
        server = self.server
        channel = grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        request = check_request()
        http_conn: socket.socket | None = None

        def grpc_check() -> None:
            response = stub.Check(request, timeout=self.timeout)
            assert response.status.code == 0, response.status

        def healthz() -> None:
            conn = http.client.HTTPConnection(LOOPBACK, server.http_port, timeout=self.timeout)
            try:
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
            finally:
                conn.close()

        def http_check() -> None:
            nonlocal http_conn
            if http_conn is None:
                http_conn = socket.create_connection((LOOPBACK, server.authz_port), self.timeout)
            try:
                http_conn.sendall(http_check_bytes())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = http_conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    head += chunk
                assert head.startswith(b"HTTP/1.1 200"), head[:80]
            except BaseException:
                http_conn.close()
                http_conn = None
                raise

        try:
            while not self._stop.is_set():
                self._timed("grpc", grpc_check)
                if self.healthz:
                    self._timed("healthz", healthz)
                if self.http_transport:
                    self._timed("http_authz", http_check)
                self._stop.wait(self.interval)
        finally:
            channel.close()
            if http_conn is not None:
                http_conn.close()


def rss_mib(server: Server) -> float:
    return rss_bytes(server.pid) / 2**20
