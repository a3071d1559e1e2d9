"""The built-in HTTP/2 gRPC server with real clients: grpcio's sync client (one channel, many
concurrent calls, messages of several MiB both ways, deadlines, status details) and nghttp2's
``h2load``. The server runs in process (:mod:`tests.support.h2server`); Envoy's gRPC client is
exercised by the e2e suites (``grpc-native`` in tests/support/transports.GRPC_TRANSPORTS).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.h2grpc.connection import Call
from extauthz.netlimits import GrpcLimits
from tests.support.h2raw import grpc_message
from tests.support.h2server import ECHO_PATH, HOLD_PATH, InProcessServer, check_request

MESSAGE_PATH = "/test.Message/Fail"
#: a status text with what grpc-message must percent-encode (%, CR LF, non-ASCII)
ODD_TEXT = "100% sure\r\nnot ascii: é ✓ {ok}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    running = InProcessServer(tmp_path_factory.mktemp("interop"), GrpcLimits())

    def fail(call: Call) -> None:
        call.finish(9, None, ODD_TEXT)  # FAILED_PRECONDITION

    running.call(lambda: running.server.methods.__setitem__(MESSAGE_PATH, fail))
    yield running
    running.stop()


@pytest.fixture
def channel(server: InProcessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20)]) as opened:
        yield opened


def test_many_concurrent_calls_on_one_channel(server: InProcessServer,
                                              channel: grpc.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    allowed, denied = check_request(), check_request(key="wrong")

    def one(index: int) -> int:
        return int(stub.Check(allowed if index % 2 else denied, timeout=10).status.code)

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(one, range(2000)))
    assert codes == [0 if index % 2 else 16 for index in range(2000)]
    assert server.streams() == 0


def test_large_messages_both_ways(channel: grpc.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    response = stub.Check(check_request(body=b"b" * (3 << 20)), timeout=20)
    # arrived whole and decoded: the engine's own answer to a body over its max_body_bytes
    assert (response.status.code, response.status.message) == (3, "body_too_large")
    echo = channel.unary_unary(ECHO_PATH)
    message = bytes(range(256)) * (12 << 10)  # 3 MiB: the answer is flow-controlled by grpcio
    assert echo(message, timeout=20) == message


def test_a_message_over_the_limit_is_resource_exhausted(channel: grpc.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    with pytest.raises(grpc.RpcError) as failed:
        stub.Check(check_request(body=b"b" * (5 << 20)), timeout=20)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.value.details() == "the request message is larger than the server accepts"
    assert stub.Check(check_request(), timeout=5).status.code == 0  # the channel goes on


def test_a_deadline_cancels_the_call_and_the_server_lets_go(server: InProcessServer,
                                                            channel: grpc.Channel) -> None:
    hold = channel.unary_unary(HOLD_PATH)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        hold(b"", timeout=0.3)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    # the held call counts until it ends (it stands for a check: complete_on_reset)
    assert server.streams() == 1
    server.release()
    deadline = time.monotonic() + 5
    while server.streams():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.held.clear()
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    assert stub.Check(check_request(), timeout=5).status.code == 0


def test_status_details_survive_percent_encoding(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(MESSAGE_PATH)(b"", timeout=5)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == ODD_TEXT


def test_unknown_method_and_service(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary("/no.Such/Method")(b"", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_check_and_watch(server: InProcessServer, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == 1
    server.run(server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    assert next(watch).status == 2
    server.run(server.health.set("", health_pb2.HealthCheckResponse.SERVING))
    assert next(watch).status == 1
    watch.cancel()
    deadline = time.monotonic() + 5
    while server.streams():  # the Watch's stream and task are gone
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
@pytest.mark.parametrize("table_size", [4096, 0])
def test_h2load(server: InProcessServer, tmp_path: Path, table_size: int) -> None:
    # SETTINGS_HEADER_TABLE_SIZE 0: nghttp2 then requires a dynamic table size update at the
    # start of the next block it decodes (COMPRESSION_ERROR without; every call failed before
    # the server began its first block with one)
    body = tmp_path / "check.bin"
    body.write_bytes(grpc_message(check_request().SerializeToString()))
    result = subprocess.run(
        ["h2load", "-n", "3000", "-c", "3", "-m", "20", "-d", str(body),
         f"--header-table-size={table_size}",
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{server.port}/envoy.service.auth.v3.Authorization/Check"],
        capture_output=True, text=True, timeout=120, check=False)
    print(result.stdout[-1500:])
    assert result.returncode == 0, result.stderr
    assert re.search(r"requests: 3000 total, 3000 started, 3000 done, 3000 succeeded, 0 failed, "
                     r"0 errored, 0 timeout", result.stdout)
    assert re.search(r"status codes: 3000 2xx, 0 3xx, 0 4xx, 0 5xx", result.stdout)
    assert server.streams() == 0


def test_a_grpcio_check_response_is_the_engine_answer(channel: grpc.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    response = stub.Check(check_request(key=None), timeout=5)
    assert isinstance(response, external_auth_pb2.CheckResponse)
    assert response.status.code == 16
    assert response.denied_response.status.code == 401


def test_the_h2_state_machine_accepts_every_kind_of_answer(server: InProcessServer) -> None:
    """python-hyper's h2 as the client, validating what it receives (frames, header blocks,
    pseudo-headers, stream states): an answer, a trailers-only answer, an HTTP status, a
    RST_STREAM after an early answer."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_inbound_headers=True, normalize_inbound_headers=False))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", server.port), 5)
    sock.sendall(conn.data_to_send())
    conn.receive_data(sock.recv(1 << 16))  # the server's SETTINGS and window
    request = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    cases = {
        1: ("/envoy.service.auth.v3.Authorization/Check",
            grpc_message(check_request().SerializeToString())),
        3: ("/no.Such/Method", grpc_message(b"")),
        5: ("/envoy.service.auth.v3.Authorization/Check", b"\x01\x00\x00\x00\x00"),
        7: (ECHO_PATH, grpc_message(b"e" * 70_000)),
    }
    for stream, (path, body) in cases.items():
        conn.send_headers(stream, [*request[:2], (":path", path), *request[2:]])
        for at in range(0, len(body), 16384):
            conn.send_data(stream, body[at:at + 16384], end_stream=at + 16384 >= len(body))
    conn.send_headers(9, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                          (":path", "/")], end_stream=True)
    sock.sendall(conn.data_to_send())
    ended: dict[int, list[list[tuple[bytes, bytes]]]] = {}
    data: dict[int, int] = {}
    done: set[int] = set()
    try:
        while len(done) < 5:
            chunk = sock.recv(1 << 16)
            assert chunk, "closed"
            for event in conn.receive_data(chunk):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    ended.setdefault(event.stream_id, []).append(list(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    data[event.stream_id] = data.get(event.stream_id, 0) + len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done.add(event.stream_id)
                assert not isinstance(event, (h2.events.StreamReset,
                                              h2.events.ConnectionTerminated)), event
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    status = {sid: dict(b for block in blocks for b in block).get(b"grpc-status")
              for sid, blocks in ended.items()}
    assert status == {1: b"0", 3: b"12", 5: b"12", 7: b"0", 9: None}
    assert dict(ended[9][0])[b":status"] == b"405"
    assert data[7] == 70_005
