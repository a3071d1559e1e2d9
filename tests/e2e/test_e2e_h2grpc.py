"""The built-in HTTP/2 gRPC server (``serve --grpc-server native``, extauthz.h2grpc) through a
real ``extauthz serve`` process: what is particular to it, end to end.

The checks themselves (JWT, headers, failure, parity, mTLS, OTel) run over it in their own
modules (``grpc-native`` in ``GRPC_TRANSPORTS``), the abuse tests it shares with grpc.aio in
tests/e2e/test_e2e_grpc_bounds.py; here: health (Check, Watch, unknown service), a forged
CheckRequest is an ordinary gRPC call, the SIGTERM drain, serving without grpcio installed, and
the abusive clients only this server must bound itself (connection cap, a header block that
never ends, a client that never reads) while a normal client measures itself.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperframe.frame import (
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.demo.procs import LOOPBACK, ManagedProcess, http_ok, http_status
from extauthz.grpcfront.codec import CHECK_PATH
from extauthz.h2grpc.frames import window_update
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
from tests.support.abuse import API_KEY as API_KEY_ABUSE
from tests.support.abuse import NormalClient, Server, check_request, rss_mib, start_server
from tests.support.grpcfront import serve_without_grpcio
from tests.support.h2proxy import H2Proxy
from tests.support.h2raw import CHECK_HEADERS, RawH2, raw_frame
from tests.support.load import metric, start_stack_with
from tests.support.processes import Stack
from tests.support.transports import start_transport_stack

NATIVE = ("--grpc-server", "native")
GRACE = 4.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEADERS, CONTINUATION = 0x1, 0x9


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("native"), NATIVE)
    yield running
    running.stop()


def _closed(server: Server, reason: str) -> float:
    return metric(server.metrics(), "extauthz_connections_closed_total",
                  {"port": "grpc", "reason": reason})


# -- health and calls ---------------------------------------------------------------------------

def test_health_check_watch_unknown_service_and_methods(server: Server) -> None:
    with grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # as grpc.aio answers
        assert unknown.value.details() == "unknown service"
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=3)
        assert next(watch).status == SERVING
        watch.cancel()
        # a body that is not a CheckRequest: the check edge's 400 bad_request deny
        garbage = external_auth_pb2.CheckResponse.FromString(
            channel.unary_unary(CHECK_PATH)(b"\xff\xff\xff", timeout=5))
        assert garbage.status.code == 3
        assert garbage.denied_response.status.code == 400
        with pytest.raises(grpc.RpcError) as other:
            channel.unary_unary("/x.Y/Z")(b"", timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_forged_check_to_the_grpc_port_is_an_ordinary_grpc_call(server: Server) -> None:
    # An HTTP/1.1 POST of a CheckRequest is no HTTP/2: GOAWAY PROTOCOL_ERROR, never an answer
    body = check_request().SerializeToString()
    with socket.create_connection((LOOPBACK, server.grpc_port), 5) as sock:
        sock.sendall((f"POST {CHECK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: "
                      f"application/grpc\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body)
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert not answer.startswith(b"HTTP/1.1"), answer[:80]
    assert b"\x00\x00\x00\x00\x00\x00\x00\x00\x01" in answer  # GOAWAY ... PROTOCOL_ERROR (1)
    # over HTTP/2 a CheckRequest claiming a client address is decided like any other call
    forged = check_request()
    forged.attributes.source.address.socket_address.address = "10.0.0.1"
    with grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        answer_ = external_auth_pb2_grpc.AuthorizationStub(channel).Check(forged, timeout=5)
    assert answer_.status.code == 0


# -- abusive clients ----------------------------------------------------------------------------

def test_the_connection_cap_holds_and_refused_clients_cost_nothing(server: Server) -> None:
    before = rss_mib(server)
    with NormalClient(server, http_transport=False) as normal:
        time.sleep(0.5)
        held: list[RawH2] = []
        admitted = refused = 0
        try:
            for _ in range(60):
                try:
                    client = RawH2(server.grpc_port)
                    held.append(client)
                    client.server_settings(timeout=2)
                    admitted += 1
                except OSError:
                    refused += 1
        finally:
            for client in held:
                client.close()
        time.sleep(0.5)
    counted = metric(server.metrics(), "extauthz_connections_refused_total", {"port": "grpc"})
    print(f"\n60 connections: {admitted} admitted, {refused} refused (cap 32, the normal "
          f"client's channel included); refused counter {counted}; RSS {before:.1f} -> "
          f"{rss_mib(server):.1f} MiB")
    assert admitted == 31 and refused == 29
    assert counted >= 29
    assert_normal_client_unharmed(normal.samples, http_transport=False)


def test_a_header_block_that_never_ends_is_closed_at_the_idle_timeout(tmp_path: Path) -> None:
    server = start_server(tmp_path / "loris", [*NATIVE, "--grpc-idle-timeout", "2"])
    try:
        with NormalClient(server, http_transport=False, interval=0.02) as normal:
            time.sleep(0.5)
            loris = [RawH2(server.grpc_port) for _ in range(8)]
            block = loris[0].encoder.encode(CHECK_HEADERS)
            started = time.monotonic()
            for client in loris:
                client.server_settings()
                client.send(raw_frame(HEADERS, 0, 1, block[:2]))
            goaways: list[int | None] = [None] * len(loris)
            while time.monotonic() - started < 8 and None in goaways:
                for index, client in enumerate(loris):  # one byte a second per connection
                    if goaways[index] is None:
                        client.send(raw_frame(CONTINUATION, 0, 1, b"\x00"))
                        goaways[index] = client.goaway(timeout=0.1)
                time.sleep(0.3)
            elapsed = time.monotonic() - started
            closed = [client.closed_by_server(timeout=2) for client in loris]
            for client in loris:
                client.close()
    finally:
        server.stop()
    print(f"\n8 header blocks a byte at a time: GOAWAY {goaways} after {elapsed:.1f} s "
          f"(idle timeout 2 s)")
    assert goaways == [0] * len(loris)  # NO_ERROR: the idle timeout
    assert all(closed)
    assert elapsed < 2 + 3
    assert_normal_client_unharmed(normal.samples, http_transport=False)


def test_a_client_that_never_reads_is_paused_and_then_closed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "unread", [*NATIVE, "--grpc-idle-timeout", "3"])
    message = check_request().SerializeToString()
    try:
        before = rss_mib(server)
        with NormalClient(server, http_transport=False) as normal:
            time.sleep(0.5)
            client = RawH2(server.grpc_port, initial_window=2**31 - 1)
            client.server_settings()
            client.send(window_update(0, 2**31 - 1 - 65535))  # DATA is never held back
            sent = 0
            started = time.monotonic()
            while time.monotonic() - started < 20:  # until the server stops reading
                if not client.send(client.calls(32, message)):
                    break
                sent += 32
            stalled = time.monotonic() - started
            paused = metric(server.metrics(), "extauthz_reading_paused_total",
                            {"port": "grpc"})
            peak = rss_mib(server)
            deadline = time.monotonic() + 10
            while _closed(server, "unread") < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            closed_after = time.monotonic() - started
            client.close()
            time.sleep(0.5)
    finally:
        server.stop()
    print(f"\na client that never reads: {sent} calls sent before the send stalled "
          f"({stalled:.1f} s); reading paused {paused:.0f} times; RSS {before:.1f} -> peak "
          f"{peak:.1f} MiB; closed (unread) after {closed_after:.1f} s")
    assert paused >= 1
    assert stalled < 20  # the server stopped reading: the client's sends block
    assert closed_after < stalled + 3 + 3
    assert peak - before < 64
    assert_normal_client_unharmed(normal.samples, http_transport=False)


# -- drain --------------------------------------------------------------------------------------

def _health_status(port: int) -> int | None:
    try:
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1)
            return int(answer.status)
    except grpc.RpcError:
        return None


def _watch(port: int, seen: list[int], outcome: list[grpc.StatusCode]) -> None:
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        try:
            for message in call:
                seen.append(int(message.status))
            outcome.append(call.code())
        except grpc.RpcError as exc:
            outcome.append(exc.code())


def test_sigterm_drains_the_native_server(
    extauthz_config: Path, echo: BackgroundApp, tmp_path: Path, slow_as: SlowAS  # noqa: F811
) -> None:
    stack = start_stack_with(extauthz_config, echo_port=echo.port, log_dir=tmp_path / "logs",
                             ext_authz_timeout="5s",
                             extra_args=["--grace-seconds", str(GRACE), "--no-decision-log",
                                         *NATIVE])
    try:
        proc = stack.extauthz
        assert proc.popen is not None and proc.pid is not None
        port = stack.ports.extauthz
        assert _health_status(port) == SERVING
        seen: list[int] = []
        outcome: list[grpc.StatusCode] = []
        watcher = threading.Thread(target=_watch, args=(port, seen, outcome), daemon=True)
        watcher.start()
        deadline = time.monotonic() + 5
        while not seen:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = slow_as.count()
        tokens = [f"active-user{i}-{i}" for i in range(IN_FLIGHT - 1)] + ["revoked-1"]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures: list[Future[tuple[Response, float]]] = [
                pool.submit(_timed_get, stack, "/slow/x", {"authorization": f"Bearer {t}"})
                for t in tokens]
            _wait_calls(slow_as, before + IN_FLIGHT)
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)
            watcher.join(5)
            assert not watcher.is_alive()
            # the Watch ends with NOT_SERVING, then OK, while checks are in flight
            assert seen == [SERVING, NOT_SERVING] and outcome == [grpc.StatusCode.OK]
            assert proc.running
            assert http_status(stack.extauthz_url + "/readyz") == 503
            # a new check during the drain is refused: Envoy fails it closed
            assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))
            # and a new connection to the port is not accepted
            with pytest.raises(OSError):
                socket.create_connection((LOOPBACK, port), 1).close()
            results = [f.result(timeout=10) for f in futures]
        for (response, _), token in zip(results, tokens, strict=True):
            if token.startswith("active-"):
                assert upstream_headers(response)["x-auth-subject"] == token.split("-")[1]
            else:
                assert_denied(response, 401, "inactive_token")
        code = proc.popen.wait(GRACE + 5)
        exited = time.monotonic() - sent
        print(f"\nSIGTERM (native): Watch saw {seen} then {outcome}; exit {code} after "
              f"{exited:.2f} s")
        assert code == 0, proc.log_tail()
        assert exited < GRACE + 1
        assert_envoy_failed_closed(stack.get("/stable/x", {"x-api-key": API_KEY}))
    finally:
        stack.stop()


# -- grpcio is optional -------------------------------------------------------------------------

def test_the_native_server_serves_without_grpcio_installed(tmp_path: Path) -> None:
    env, argv, grpc_port, http_port = serve_without_grpcio(tmp_path)
    argv = [*argv, *NATIVE, "--no-decision-log"]
    proc = ManagedProcess("extauthz", argv, tmp_path / "extauthz.log", env=env).start()
    try:
        proc.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), 20)
        with grpc.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
            answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(), timeout=5)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status.code == 0 and health.status == SERVING
    finally:
        proc.stop()


def test_response_headers_are_constant_blocks(server: Server) -> None:
    client = RawH2(server.grpc_port)
    try:
        client.server_settings()
        stream = client.call(check_request().SerializeToString())
        answer = client.response(stream)
    finally:
        client.close()
    assert answer.blocks == [[(":status", "200"), ("content-type", "application/grpc")],
                             [("grpc-status", "0")]]


# -- Envoy's gRPC client as the built-in server sees it (docs/envoy-wire-facts.md) -------------

@pytest.fixture
def observed(tmp_path: Path, echo: BackgroundApp,
             request: pytest.FixtureRequest) -> Iterator[tuple[Stack, H2Proxy]]:
    """Envoy (deploy/envoy/envoy.yaml) -> recording proxy -> extauthz native; an indirect
    parameter may give more ``serve`` flags (``args``) and the streams the proxy refuses
    (``refuse``)."""
    param: dict[str, Any] = getattr(request, "param", {})
    extra = list(param.get("args", ()))
    proxy = H2Proxy(refuse=param.get("refuse", 0))

    def through_proxy(config: dict[str, Any]) -> None:
        (cluster,) = [c for c in config["static_resources"]["clusters"]
                      if c["name"] == "extauthz"]
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"]["socket_address"]
        proxy.target_port = address["port_value"]
        address["port_value"] = proxy.port
        if "keepalive" in param:  # Envoy's HTTP/2 keepalive pings to extauthz
            options = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            options["explicit_http_config"]["http2_protocol_options"] = {
                "connection_keepalive": {"interval": param["keepalive"], "timeout": "1s"}}

    from tests.support.abuse import CONFIG
    from tests.support.processes import write_config

    config = write_config(tmp_path / "extauthz.yaml", CONFIG)
    stack = start_transport_stack("grpc-native", config, upstream_port=echo.port,
                                  log_dir=tmp_path / "logs", envoy_edit=through_proxy,
                                  extra_args=extra)
    try:
        yield stack, proxy
    finally:
        stack.stop()
        proxy.close()


def _get(stack: Stack) -> int:
    return stack.get("/api/x", {"x-api-key": API_KEY_ABUSE}).status


def test_envoy_grpc_client_headers_settings_and_no_pings(
    observed: tuple[Stack, H2Proxy],
) -> None:
    stack, proxy = observed
    assert [_get(stack) for _ in range(5)] == [200] * 5
    time.sleep(3)  # pings, if Envoy sent any on an idle connection
    (settings, *_) = [f for f in proxy.of_type(SettingsFrame) if "ACK" not in f.flags]
    requests = proxy.requests()
    names = [name for name, _ in requests[0]]
    print(f"\nEnvoy's SETTINGS {dict(settings.settings)}; connection WINDOW_UPDATEs "
          f"{[f.window_increment for f in proxy.of_type(WindowUpdateFrame) if not f.stream_id]}"
          f"; request headers {requests[0]}; connections {proxy.connections}")
    # Envoy's HTTP/2 defaults: 16 MiB per stream, 24 MiB for the connection, 1024 streams
    assert dict(settings.settings) == {
        SettingsFrame.HEADER_TABLE_SIZE: 4096, SettingsFrame.ENABLE_PUSH: 0,
        SettingsFrame.MAX_CONCURRENT_STREAMS: 1024, SettingsFrame.INITIAL_WINDOW_SIZE: 16 << 20,
        SettingsFrame.ENABLE_CONNECT_PROTOCOL: 0}
    assert [f.window_increment for f in proxy.of_type(WindowUpdateFrame)
            if f.stream_id == 0][:1] == [(24 << 20) - 65535]
    assert names == [":method", ":path", ":authority", ":scheme", "te", "grpc-timeout",
                     "content-type", "x-envoy-internal", "x-forwarded-for",
                     "x-envoy-expected-rq-timeout-ms"]
    assert dict(requests[0]) == {
        ":method": "POST", ":scheme": "http", ":authority": "extauthz",
        ":path": CHECK_PATH, "content-type": "application/grpc", "te": "trailers",
        "grpc-timeout": "1000m", "x-envoy-internal": "true",
        "x-forwarded-for": dict(requests[0])["x-forwarded-for"],  # Envoy's host address
        "x-envoy-expected-rq-timeout-ms": "1000"}
    assert all(request == requests[0] for request in requests)
    # from the second call on, the block is the same bytes (indexed from the dynamic table):
    # the steady state the server's memo of header blocks is for
    blocks = [f.data for f in proxy.of_type(HeadersFrame) if f.stream_id % 2]
    assert len(blocks) == 5 and len(set(blocks[1:])) == 1 and blocks[1] != blocks[0]
    print(f"first block {len(blocks[0])} bytes, then {len(blocks[1])} bytes")
    assert proxy.of_type(PingFrame) == []
    assert proxy.connections == 1


@pytest.mark.parametrize("observed", [{"args": ["--grpc-idle-timeout", "1"]}], indirect=True)
def test_envoy_reconnects_after_a_goaway(observed: tuple[Stack, H2Proxy]) -> None:
    stack, proxy = observed
    assert _get(stack) == 200
    deadline = time.monotonic() + 5
    while not proxy.of_type(GoAwayFrame, "s2c"):
        assert time.monotonic() < deadline, "no idle GOAWAY"
        time.sleep(0.1)
    assert [_get(stack) for _ in range(3)] == [200] * 3
    # the first of the two-step GOAWAY (largest stream id, then a PING): with no check open
    # Envoy closes the connection at once, without answering the PING
    goaways = proxy.of_type(GoAwayFrame, "s2c")
    assert [(f.last_stream_id, f.error_code) for f in goaways] == [(2**31 - 1, 0)]
    assert [f for f in proxy.of_type(PingFrame) if "ACK" in f.flags] == []
    assert proxy.connections == 2


@pytest.mark.parametrize("observed", [{"refuse": 1}], indirect=True)
def test_envoy_fails_a_refused_check_closed(observed: tuple[Stack, H2Proxy]) -> None:
    stack, proxy = observed
    first = stack.get("/api/x", {"x-api-key": API_KEY_ABUSE})
    print(f"\nfirst check refused (REFUSED_STREAM): Envoy answered {first.status}")
    assert_envoy_failed_closed(first)  # not retried: ext_authz's gRPC client has no retries
    assert [_get(stack) for _ in range(3)] == [200] * 3
    print(f"then 3 checks answered on {proxy.connections} connection(s)")


@pytest.mark.parametrize("observed", [{"args": ["--grpc-max-concurrent-streams", "1"]}],
                         indirect=True)
def test_envoy_keeps_to_max_concurrent_streams(observed: tuple[Stack, H2Proxy]) -> None:
    stack, proxy = observed
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: _get(stack), range(200)))
    refused = [f for f in proxy.of_type(RstStreamFrame, "s2c") if f.error_code == 7]
    print(f"\n200 checks, 16 at a time, MAX_CONCURRENT_STREAMS 1: {proxy.connections} "
          f"connections, {len(refused)} refused streams")
    assert statuses == [200] * 200
    assert refused == []
    assert proxy.connections > 1  # Envoy opens connections instead of exceeding the limit


@pytest.mark.parametrize("observed", [{"keepalive": "0.5s"}], indirect=True)
def test_envoy_keepalive_pings_without_calls_get_too_many_pings(
    observed: tuple[Stack, H2Proxy],
) -> None:
    stack, proxy = observed
    assert _get(stack) == 200
    deadline = time.monotonic() + 6
    while not proxy.of_type(GoAwayFrame, "s2c"):
        assert time.monotonic() < deadline, "no GOAWAY"
        time.sleep(0.1)
    (goaway,) = proxy.of_type(GoAwayFrame, "s2c")
    pings = [f for f in proxy.of_type(PingFrame) if "ACK" not in f.flags]
    print(f"\nkeepalive 0.5 s: {len(pings)} pings, then GOAWAY {goaway.error_code} "
          f"{goaway.additional_data!r}")
    # grpc core's policy (2 strikes without calls), as grpc.aio's server: the connection goes,
    # and the next check opens a new one without failing
    assert (goaway.error_code, goaway.additional_data) == (0xB, b"too_many_pings")
    assert [_get(stack) for _ in range(3)] == [200] * 3
    assert proxy.connections == 2
