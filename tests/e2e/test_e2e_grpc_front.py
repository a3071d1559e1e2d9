"""The gRPC front (``serve --grpc-server envoy``): what is particular to it, end to end.

The checks themselves (JWT, headers, failure, parity, mTLS) run over it in their own modules
(``STACK_TRANSPORTS``); here: the security of the bridged endpoint, health (Check, Watch, Envoy's
``grpc_health_check``), the drain on SIGTERM, the supervision of the Envoy child (restarted
when it dies, killed when extauthz dies), grpcio not needed, and the listener's bounds under an
abusive client while a normal client measures itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperframe.frame import SettingsFrame

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.demo.procs import LOOPBACK, ManagedProcess, http_ok, http_status
from extauthz.grpcfront.codec import CHECK_PATH, CONTENT_TYPE
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.e2e.test_e2e_lifecycle import (  # noqa: F401 (fixtures)
    API_KEY,
    IN_FLIGHT,
    SlowAS,
    _timed_get,
    _wait_calls,
    assert_envoy_failed_closed,
    extauthz_config,
    slow_as,
)
from tests.e2e.test_e2e_resource_bounds import assert_normal_client_unharmed
from tests.support.abuse import NormalClient, Server, check_request, rss_mib, start_server
from tests.support.grpcfront import (
    alive,
    children,
    front_of,
    rss_anon_mib,
    serve_without_grpcio,
    tcp_listen_ports,
    wait_gone,
)
from tests.support.h2raw import RawH2
from tests.support.load import start_stack_with
from tests.support.processes import Stack
from tests.support.transports import start_transport_stack

FRONT = ("--grpc-server", "envoy")
GRACE = 4.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """extauthz with the front on --grpc-address and the HTTP transport on its own port."""
    running = start_server(tmp_path_factory.mktemp("front"), FRONT)
    yield running
    running.stop()


def _forged_check() -> bytes:
    """A CheckRequest that claims what only Envoy may say: a client address, a route."""
    request = check_request("/api/x")
    request.attributes.source.address.socket_address.address = "10.0.0.1"
    request.attributes.context_extensions["route"] = "api"
    return bytes(request.SerializeToString())


# -- the bridged endpoint is private ------------------------------------------------------------

def test_bridged_endpoint_is_a_unix_socket_in_a_private_directory(server: Server) -> None:
    envoy_pid, socket_path = front_of(server.proc.log_text())
    assert envoy_pid in children(server.pid)
    directory = socket_path.parent
    mode = stat.S_IMODE(directory.stat().st_mode)
    print(f"\nbridged endpoint {socket_path} (directory mode {mode:o}), Envoy pid {envoy_pid}")
    assert mode == 0o700
    assert directory.stat().st_uid == os.getuid()
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_ISSOCK((directory / "admin.sock").stat().st_mode)  # Envoy's admin too
    # No TCP port besides the three the operator asked for: the bridge is on no TCP port.
    assert tcp_listen_ports([server.pid, envoy_pid]) == {
        server.grpc_port, server.http_port, server.authz_port}


@pytest.mark.parametrize("target", [CHECK_PATH, "/check" + CHECK_PATH, "/check/"])
def test_the_http_transport_port_never_answers_the_bridge_protocol(
    server: Server, target: str
) -> None:
    body = _forged_check()
    with socket.create_connection((LOOPBACK, server.authz_port), 5) as sock:
        sock.sendall((f"POST {target} HTTP/1.1\r\nhost: api.example.com\r\n"
                      f"content-type: {CONTENT_TYPE}\r\ncontent-length: {len(body)}\r\n"
                      "connection: close\r\n\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    print(f"\n{target}: {head.splitlines()[0]}")
    # Decided as an ordinary request for that path (no route: 403; outside the prefix: 400),
    # never read as a CheckRequest and never answered in the bridge's format.
    assert head.startswith(("http/1.1 403", "http/1.1 400")), head
    assert CONTENT_TYPE not in head


def test_a_forged_check_to_the_grpc_port_is_an_ordinary_grpc_call(server: Server) -> None:
    # The gRPC port takes only gRPC (HTTP/2): an HTTP/1.1 POST in the bridge's format is refused.
    body = _forged_check()
    with socket.create_connection((LOOPBACK, server.grpc_port), 5) as sock:
        sock.sendall((f"POST {CHECK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: {CONTENT_TYPE}"
                      f"\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body)
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:80]


# -- health -------------------------------------------------------------------------------------

def test_health_check_watch_and_errors_through_the_front(server: Server) -> None:
    with grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        # grpc.aio answers NOT_FOUND; no HTTP status maps to it through the bridge
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Watch: the unary bridge carries one message, then Envoy ends the stream with OK
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert [m.status for m in watch] == [SERVING]
        assert watch.code() == grpc.StatusCode.OK
        # a body that is not a CheckRequest: the check edge's 400 bad_request deny
        garbage = external_auth_pb2.CheckResponse.FromString(
            channel.unary_unary(CHECK_PATH)(b"\xff\xff\xff", timeout=5))
        assert garbage.status.code == 3  # INVALID_ARGUMENT
        assert garbage.denied_response.status.code == 400
        with pytest.raises(grpc.RpcError) as other:
            channel.unary_unary("/x.Y/Z")(b"", timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _with_health_check(config: dict[str, Any]) -> None:
    """The proxy's ext_authz cluster health-checked with grpc_health_check (every 0.2 s)."""
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "extauthz"]
    cluster["health_checks"] = [{
        "timeout": "1s", "interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "grpc_health_check": {"service_name": "envoy.service.auth.v3.Authorization"}}]


def _cluster_health(stack: Stack) -> str:
    text = subprocess.run(["curl", "-s", stack.admin_url + "/clusters"], capture_output=True,
                          text=True, timeout=5, check=False).stdout
    flags = [line for line in text.splitlines() if line.startswith("extauthz::")
             and "health_flags" in line]
    return flags[0].rsplit("::", 1)[1] if flags else "?"


# -- drain --------------------------------------------------------------------------------------

def _health_status(port: int) -> int | None:
    try:
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1)
            return int(answer.status)
    except grpc.RpcError:
        return None


def test_sigterm_drains_through_the_front_and_envoy_goes_with_extauthz(
    extauthz_config: Path, echo: BackgroundApp, tmp_path: Path, slow_as: SlowAS  # noqa: F811
) -> None:
    stack = start_stack_with(extauthz_config, echo_port=echo.port, log_dir=tmp_path / "logs",
                             ext_authz_timeout="5s",
                             extra_args=["--grace-seconds", str(GRACE), "--no-decision-log",
                                         *FRONT])
    try:
        proc = stack.extauthz
        assert proc.popen is not None and proc.pid is not None
        envoy_pid, socket_path = front_of(proc.log_text())
        assert _health_status(stack.ports.extauthz) == SERVING
        before = slow_as.count()
        tokens = [f"active-user{i}-{i}" for i in range(IN_FLIGHT - 1)] + ["revoked-1"]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures: list[Future[tuple[Response, float]]] = [
                pool.submit(_timed_get, stack, "/slow/x", {"authorization": f"Bearer {t}"})
                for t in tokens]
            _wait_calls(slow_as, before + IN_FLIGHT)
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)
            # NOT_SERVING through the front, and /readyz 503, while checks are in flight
            deadline = time.monotonic() + 2
            while _health_status(stack.ports.extauthz) != NOT_SERVING:
                assert time.monotonic() < deadline, "health never became NOT_SERVING"
                time.sleep(0.02)
            assert proc.running
            assert http_status(stack.extauthz_url + "/readyz") == 503
            assert http_status(stack.extauthz_url + "/healthz") == 200
            # a new check during the drain is refused: Envoy fails it closed
            assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))
            results = [f.result(timeout=10) for f in futures]
        for (response, _), token in zip(results, tokens, strict=True):
            if token.startswith("active-"):
                assert upstream_headers(response)["x-auth-subject"] == token.split("-")[1]
            else:
                assert_denied(response, 401, "inactive_token")
        code = proc.popen.wait(GRACE + 5)
        exited = time.monotonic() - sent
        print(f"\nSIGTERM through the front: exit {code} after {exited:.2f} s")
        assert code == 0, proc.log_tail()
        assert exited < GRACE + 1
        assert wait_gone(envoy_pid, 2), "the front's Envoy outlived extauthz"
        assert not socket_path.parent.exists()  # the private directory is removed
        assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))
    finally:
        stack.stop()


# -- supervision --------------------------------------------------------------------------------

@pytest.fixture
def front_stack(tmp_path: Path, echo: BackgroundApp, extauthz_config: Path  # noqa: F811
                ) -> Iterator[Stack]:
    running = start_transport_stack("grpc-envoy", extauthz_config, upstream_port=echo.port,
                                    log_dir=tmp_path / "logs", envoy_edit=_with_health_check)
    yield running
    running.stop()


def test_a_dead_envoy_child_is_restarted_and_extauthz_is_unready_meanwhile(
    front_stack: Stack,
) -> None:
    stack = front_stack
    assert stack.get("/stable/x", {"x-api-key": API_KEY}).status == 200
    deadline = time.monotonic() + 5
    while _cluster_health(stack) != "healthy":  # Envoy's grpc_health_check through the front
        assert time.monotonic() < deadline, _cluster_health(stack)
        time.sleep(0.1)
    first, _ = front_of(stack.extauthz.log_text())
    os.kill(first, signal.SIGKILL)
    unready_seen = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = http_status(stack.extauthz_url + "/readyz")
        unready_seen |= status == 503
        if unready_seen and status == 200:
            break
        time.sleep(0.02)
    assert stack.extauthz.pid is not None
    (restarted,) = children(stack.extauthz.pid)
    print(f"\nEnvoy child {first} killed: /readyz 503 seen {unready_seen}, restarted as "
          f"{restarted}, ready again after {10 - (deadline - time.monotonic()):.2f} s")
    assert unready_seen
    assert http_status(stack.extauthz_url + "/readyz") == 200
    assert restarted != first and alive(restarted)
    assert "Envoy exited (status -9)" in stack.extauthz.log_text()
    deadline = time.monotonic() + 5
    while stack.get("/stable/x", {"x-api-key": API_KEY}).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_envoy_does_not_outlive_a_killed_extauthz(front_stack: Stack) -> None:
    envoy_pid, socket_path = front_of(front_stack.extauthz.log_text())
    front_stack.extauthz.kill()
    assert wait_gone(envoy_pid, 3), "the front's Envoy is an orphan"
    assert front_stack.get("/stable/x", {"x-api-key": API_KEY}).status == 503
    # a SIGKILL leaves the private directory behind (mkdtemp never reuses a name)
    shutil.rmtree(socket_path.parent, ignore_errors=True)


# -- grpcio is optional -------------------------------------------------------------------------

def test_the_front_serves_without_grpcio_installed(tmp_path: Path) -> None:
    env, argv, grpc_port, http_port = serve_without_grpcio(tmp_path)
    # the grpcio server cannot start: a clear message
    refused = subprocess.run([*argv, "--grpc-server", "grpcio"], env=env, capture_output=True,
                             text=True, timeout=30, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "extauthz[grpcio]" in refused.stderr
    proc = ManagedProcess("extauthz", [*argv, *FRONT, "--no-decision-log"],
                          tmp_path / "extauthz.log", env=env).start()
    try:
        proc.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), 20)
        with grpc.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
            answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(), timeout=5)
        assert answer.status.code == 0
        assert isinstance(answer, external_auth_pb2.CheckResponse)
    finally:
        proc.stop()


# -- bounds of the front's listener -------------------------------------------------------------

def test_front_listener_bounds_under_an_abusive_client(server: Server) -> None:
    conn = RawH2(server.grpc_port)
    try:
        settings = conn.server_settings()
    finally:
        conn.close()
    assert settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS) == 64
    message = check_request().SerializeToString()
    envoy_pid, _ = front_of(server.proc.log_text())
    before = rss_anon_mib(envoy_pid) + rss_mib(server)
    peak = before
    with NormalClient(server, http_transport=False) as normal:
        time.sleep(0.5)
        # 1. the connection cap (32, the normal client's channel included)
        idle: list[RawH2] = []
        admitted = 0
        try:
            for _ in range(40):
                try:
                    attacker = RawH2(server.grpc_port)
                    idle.append(attacker)
                    attacker.server_settings(timeout=2)
                except OSError:
                    continue
                admitted += 1
        finally:
            for attacker in idle:
                attacker.close()
        time.sleep(0.5)
        # 2. 20 connections x 1 000 streams whose answers are never read, then rapid reset
        outcome = []
        for _ in range(20):
            try:
                attacker = RawH2(server.grpc_port, initial_window=0)
                attacker.server_settings(timeout=2)
            except OSError:
                continue
            sent = sum(500 for _ in range(2) if attacker.send(attacker.calls(500, message)))
            outcome.append(("streams", sent, attacker.goaway(timeout=0.2)))
            idle.append(attacker)
            peak = max(peak, rss_anon_mib(envoy_pid) + rss_mib(server))
        for _ in range(2):
            reset = RawH2(server.grpc_port)
            reset.server_settings(timeout=2)
            sent = 0
            for _ in range(20):
                if not reset.send(reset.rapid_resets(500)):
                    break
                sent += 500
            outcome.append(("rapid reset", sent, reset.goaway(timeout=1)))
            reset.close()
        time.sleep(1.0)
        for attacker in idle:
            attacker.close()
        time.sleep(1.0)
    print(f"\nfront: {admitted} of 40 idle connections admitted (cap 32); abusive connections "
          f"(kind, streams sent, GOAWAY code): {outcome}; extauthz RSS + Envoy anonymous RSS "
          f"{before:.1f} -> peak {peak:.1f} MiB")
    assert admitted <= 31
    assert peak - before < 64, (before, peak)  # grpc.aio's bound: 62 MiB
    assert_normal_client_unharmed(normal.samples, http_transport=False, bound=1.0)
