"""Issue 13.6 and 13.9 (SIGTERM): a real ``extauthz serve`` process.

* Its stdout and stderr are pipes nobody reads, and every check logs a line (a route whose
  query-string credential the HTTP transport cannot strip: one ERROR line per check). Before,
  the first log line after the pipe filled blocked the event loop: checks and ``/healthz`` hung.
* SIGTERM while a ``grpc.health.v1.Health/Watch`` stream is open: before, the process waited the
  whole ``--grace-seconds`` for the stream.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.demo.procs import LOOPBACK, free_ports, http_ok
from extauthz.keys import hash_api_key
from tests.support.abuse import API_KEY, CONFIG, check_request, p99, start_server
from tests.support.load import metric
from tests.support.processes import write_config

QUERY_CONFIG = {
    **CONFIG,
    "authenticators": {
        **CONFIG["authenticators"],  # type: ignore[dict-item]
        "qkeys": {"api_key": {"sources": [{"query": "api_key"}]}},
    },
    "consumers": [{"name": "normal", "keys": [{"id": "k1", "hash": hash_api_key(API_KEY)}]}],
    "routes": [
        {"name": "api", "match": {"prefix": "/api/"}, "authn": ["keys"]},
        {"name": "query", "match": {"prefix": "/q/"}, "authn": ["qkeys"]},
    ],
}


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, int]]:
    """extauthz whose stdout and stderr are pipes this test never reads."""
    config = write_config(tmp_path / "extauthz.yaml", QUERY_CONFIG)
    grpc_port, http_port, authz_port = free_ports(3)
    argv = [sys.executable, "-m", "extauthz", "serve", "--config", str(config),
            "--grpc-address", f"{LOOPBACK}:{grpc_port}",
            "--http-address", f"{LOOPBACK}:{http_port}",
            "--http-authz-address", f"{LOOPBACK}:{authz_port}", "--grace-seconds", "2"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        ready = http_ok(f"http://{LOOPBACK}:{http_port}/readyz")
        deadline = time.monotonic() + 20
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, "extauthz did not start"
            time.sleep(0.05)
        yield proc, grpc_port, http_port, authz_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_a_pipe_nobody_reads_does_not_stall_checks_or_healthz(
    piped: tuple[subprocess.Popen[bytes], int, int, int],
) -> None:
    proc, grpc_port, http_port, authz_port = piped
    logging_request = (f"GET /check/q/x?api_key={API_KEY} HTTP/1.1\r\nhost: a\r\n"
                       "content-length: 0\r\n\r\n").encode()
    latencies: list[float] = []
    with socket.create_connection((LOOPBACK, authz_port), 5) as sock, \
            grpc.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        sock.settimeout(5)
        # 12 000 ERROR lines (~200 bytes each): far beyond a 64 KiB pipe and the log queue
        # (10 000 records), sent 50 at a time (pipelined)
        batch = 50
        for i in range(12_000 // batch):
            sock.sendall(logging_request * batch)
            answers = b""
            while answers.count(b"HTTP/1.1 503") < batch:
                chunk = sock.recv(65536)
                assert chunk, "closed"
                answers += chunk
            if i % 4 == 0:  # the other clients, measured
                started = time.perf_counter()
                assert stub.Check(check_request(), timeout=5).status.code == 0
                conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=5)
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
                conn.close()
                latencies.append(time.perf_counter() - started)
    conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    dropped = metric(text, "extauthz_log_dropped_total")
    decisions_dropped = metric(text, "extauthz_decision_log_dropped_total")
    print(f"\n12 000 logged checks into unread pipes: gRPC + /healthz p99 "
          f"{p99(latencies) * 1000:.1f} ms; log records dropped {dropped:.0f}, decision-log "
          "lines dropped "
          f"{decisions_dropped:.0f}")
    assert p99(latencies) < 0.5
    assert dropped > 0  # the pipe was full: lines were dropped, not waited for
    # and it still stops promptly (no thread holds a lock of sys.stdout/sys.stderr)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    print(f"exit after SIGTERM with both pipes full: {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 8


def test_sigterm_ends_open_health_watch_streams_instead_of_waiting_the_grace_period(
    tmp_path: Path,
) -> None:
    grace = 10.0
    server = start_server(tmp_path, ["--grace-seconds", str(grace)])
    updates: list[int] = []
    ended: list[str] = []
    channel = grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}")
    try:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                          timeout=60)

        def read() -> None:
            try:
                for response in call:
                    updates.append(response.status)
                ended.append("OK")
            except grpc.RpcError as exc:
                ended.append(str(exc.code()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 5
        while health_pb2.HealthCheckResponse.SERVING not in updates:
            assert time.monotonic() < deadline, updates
            time.sleep(0.02)
        started = time.monotonic()
        server.proc.signal(signal.SIGTERM)
        assert server.proc.popen is not None
        code = server.proc.popen.wait(grace + 5)
        exited = time.monotonic() - started
        reader.join(5)
    finally:
        channel.close()
        server.stop()
    print(f"\nSIGTERM with a Watch stream open: exit {code} after {exited:.2f} s "
          f"(grace {grace} s); stream saw {updates}, ended {ended}")
    assert code == 0
    assert exited < 3.0  # was the whole grace period
    assert updates[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert ended == ["OK"]
