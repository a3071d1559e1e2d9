"""extauthz.grpcfront in process: the codec, the bridged endpoint over its Unix socket, the
generated Envoy bootstrap (validated by the real Envoy) and the CLI/env switch."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.cli import build_parser
from extauthz.grpcfront import codec
from extauthz.grpcfront.bootstrap import FrontConfig, bootstrap
from extauthz.grpcfront.front import FrontOptions, GrpcFront
from extauthz.grpcfront.handler import BridgeServer
from extauthz.metrics import Metrics
from extauthz.netlimits import GrpcLimits
from extauthz.pipeline import Engine
from extauthz.snapshot import load_snapshot
from tests.support.envoy import validate_config
from tests.support.processes import write_config

CONFIG = {
    "version": 1,
    "authenticators": {"keys": {"api_key": {"sources": [{"query": "api_key"}]}}},
    "consumers": [{"name": "c", "keys": [{"id": "k1", "hash":
                  "sha256:" + "0" * 64}]}],
    "routes": [{"name": "public", "match": {"prefix": "/public/"}, "public": True}],
}


def test_health_messages_are_wire_compatible_with_grpc_health() -> None:
    for status in (codec.SERVING, codec.NOT_SERVING, codec.SERVICE_UNKNOWN):
        parsed = health_pb2.HealthCheckResponse.FromString(codec.encode_health_response(status))
        assert parsed.status == status
    request = health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization")
    assert codec.decode_health_service(request.SerializeToString()) == request.service


def test_bootstrap_carries_the_grpc_bounds_and_envoy_accepts_it(tmp_path: Path) -> None:
    limits = GrpcLimits(max_connections=7, max_concurrent_streams=64, idle_timeout=11,
                        max_connection_age=13, connection_age_grace=3,
                        max_metadata_bytes=32 * 1024)
    config = bootstrap(FrontConfig(host="127.0.0.1", port=9001,
                                   bridge_socket=str(tmp_path / "bridge.sock"),
                                   admin_socket=str(tmp_path / "admin.sock"), limits=limits,
                                   request_timeout=4))
    (listener,) = config["static_resources"]["listeners"]
    cap, hcm = (f["typed_config"] for f in listener["filter_chains"][0]["filters"])
    assert cap["max_connections"] == 7
    assert hcm["codec_type"] == "HTTP2"
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 64
    assert hcm["common_http_protocol_options"]["idle_timeout"] == "11.000s"
    assert hcm["common_http_protocol_options"]["max_connection_duration"] == "13.000s"
    assert hcm["drain_timeout"] == "3.000s"
    assert hcm["max_request_headers_kb"] == 32
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["timeout"] == "4.000s"
    bridge, _router = hcm["http_filters"]
    assert bridge["typed_config"]["withhold_grpc_frames"] is True
    assert bridge["typed_config"]["content_type"] == codec.CONTENT_TYPE
    (cluster,) = config["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": str(tmp_path / "bridge.sock")}}
    assert config["admin"]["address"] == {"pipe": {"path": str(tmp_path / "admin.sock")}}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    done = validate_config(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grpc_server_flag_and_env() -> None:
    args = build_parser({}).parse_args(["serve", "--config", "x.yaml"])
    assert args.grpc_server == "native"  # the default: the built-in HTTP/2 server
    args = build_parser({"EXTAUTHZ_GRPC_SERVER": "grpcio"}).parse_args(
        ["serve", "--config", "x.yaml"])
    assert args.grpc_server == "grpcio"
    args = build_parser({"EXTAUTHZ_GRPC_SERVER": "envoy"}).parse_args(
        ["serve", "--config", "x.yaml"])
    assert args.grpc_server == "envoy"
    bad = build_parser({"EXTAUTHZ_GRPC_SERVER": "h2o"}).parse_args(
        ["serve", "--config", "x.yaml"])
    assert "EXTAUTHZ_GRPC_SERVER" in bad.env_error


async def _exchange(socket_path: str, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    return head + body


def _post(path: str, body: bytes, content_type: str = codec.CONTENT_TYPE) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def test_bridged_endpoint_answers_check_health_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    path = write_config(tmp_path / "extauthz.yaml", CONFIG)
    snapshot = load_snapshot(str(path), metrics)
    await snapshot.start()
    engine = Engine(metrics, snapshot)
    statuses = {"": codec.SERVING}
    server = BridgeServer(engine, None, health=statuses.get)
    sock = str(tmp_path / "b.sock")
    await server.start_unix(sock)
    try:
        request = external_auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method, http.path, http.host = "GET", "/public/x?api_key=secret&a=1", "h"
        http.headers.update({":method": "GET", ":path": http.path, "x-request-id": "r1"})
        request.attributes.context_extensions["route"] = "public"
        answer = await _exchange(sock, _post(codec.CHECK_PATH, request.SerializeToString()))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert f"content-type: {codec.CONTENT_TYPE}".encode() in head
        response = external_auth_pb2.CheckResponse.FromString(body)
        assert response.status.code == 0
        assert response.dynamic_metadata.fields["route"].string_value == "public"

        health = health_pb2.HealthCheckRequest(service="").SerializeToString()
        answer = await _exchange(sock, _post(codec.HEALTH_CHECK_PATH, health))
        status = health_pb2.HealthCheckResponse.FromString(answer.partition(b"\r\n\r\n")[2])
        assert status.status == codec.SERVING
        unknown = health_pb2.HealthCheckRequest(service="x").SerializeToString()
        assert (await _exchange(sock, _post(codec.HEALTH_CHECK_PATH, unknown))).startswith(
            b"HTTP/1.1 404")
        garbage = await _exchange(sock, _post(codec.CHECK_PATH, b"\xff\xff"))
        assert garbage.startswith(b"HTTP/1.1 200")  # the edge's deny of an unreadable request
        denied = external_auth_pb2.CheckResponse.FromString(garbage.partition(b"\r\n\r\n")[2])
        assert denied.denied_response.status.code == 400
        assert (await _exchange(sock, _post("/x.Y/Z", b""))).startswith(b"HTTP/1.1 404")
        assert (await _exchange(sock, _post(codec.CHECK_PATH, b"", "application/grpc"))
                ).startswith(b"HTTP/1.1 415")
        server.draining = True
        assert (await _exchange(sock, _post(codec.CHECK_PATH, request.SerializeToString()))
                ).startswith(b"HTTP/1.1 503")
        # only checks are counted as checks (the allowed one and the unreadable one)
        assert metrics.checks.labels("public", "allow", "public")._value.get() == 1
        assert metrics.checks.labels("_no_route_", "deny", "bad_request")._value.get() == 1
    finally:
        await server.stop(1.0)
        await snapshot.close()


async def test_front_start_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setenv("EXTAUTHZ_ENVOY", "/bin/false")
    metrics = Metrics()
    front = GrpcFront(Engine(metrics), None, health=lambda _: None,
                      address=("127.0.0.1", 0), limits=GrpcLimits(),
                      options=FrontOptions(runtime_dir=str(tmp_path)), on_change=lambda _: None)
    with pytest.raises(OSError, match="exited at start"):
        await front.start()
    assert front.directory and not os.path.exists(front.directory)
    assert list(tmp_path.iterdir()) == []


def test_private_directory_mode(tmp_path: Path) -> None:
    import tempfile

    made = tempfile.mkdtemp(prefix="extauthz-grpc-front-", dir=tmp_path)
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700


async def test_envoy_log_lines_go_to_extauthz_logging_at_their_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from extauthz.grpcfront.supervisor import EnvoySupervisor

    stream = asyncio.StreamReader()
    stream.feed_data(b"[warning][main] no connection limit\n[error][upstream] boom\n"
                     b"[info][config] loading\nnot in Envoy's format\n")
    stream.feed_eof()
    supervisor = EnvoySupervisor(["envoy"], "/nonexistent", lambda _: None)
    with caplog.at_level(logging.DEBUG, logger="extauthz.envoy"):
        await supervisor._forward(stream)
    seen = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "extauthz.envoy"]
    assert seen == [(logging.WARNING, "[main] no connection limit"),
                    (logging.ERROR, "[upstream] boom"), (logging.INFO, "[config] loading"),
                    (logging.WARNING, "not in Envoy's format")]


async def test_front_on_port_zero_learns_its_port_and_answers_health() -> None:
    import grpc

    changes: list[bool] = []
    front = GrpcFront(Engine(Metrics()), None, health={"": codec.SERVING}.get,
                      address=("127.0.0.1", 0), limits=GrpcLimits(),
                      options=FrontOptions(), on_change=changes.append)
    await front.start()
    try:
        assert front.port > 0 and front.ready and changes == [True]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            call = channel.unary_unary("/grpc.health.v1.Health/Check")
            answer = await call(health_pb2.HealthCheckRequest().SerializeToString(), timeout=5)
        assert health_pb2.HealthCheckResponse.FromString(answer).status == codec.SERVING
        directory = front.directory
    finally:
        await front.stop(1.0)
    assert not os.path.exists(directory) and not front.ready
