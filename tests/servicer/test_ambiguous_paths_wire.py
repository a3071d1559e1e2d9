"""Ambiguous paths on the wire, both transports, in process (issue 12, finding 5): the gRPC
CheckResponse carries INVALID_ARGUMENT and a denied_response with 400; the HTTP ext_authz
transport answers 400 with the problem body. (tests/e2e/test_e2e_edge.py sends the same paths
through the real Envoy, which shows only the HTTP status.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.server import Server, ServerOptions
from tests.support.configs import OPEN_CONFIG

CONFIG = OPEN_CONFIG
AMBIGUOUS = ["/public/..;/admin", "/admin;x=1/secret", "/static/%252e%252e/admin",
             "/static/%c0%ae%c0%ae/admin", "/a%zz", "/files/100%25.txt"]


def check_request(path: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", path, "svc.local"
    http.headers.update({":method": "GET", ":path": path, ":authority": "svc.local"})
    return req


async def http_check(port: int, path: str) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /check{path} HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else {}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    running = Server(ServerOptions(str(path), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                                   decision_log=False, http_authz_address="127.0.0.1:0"))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_ambiguous_paths_are_invalid_argument_400_on_both_transports(
        server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for path in AMBIGUOUS:
            response = await stub.Check(check_request(path))
            assert response.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], path
            assert response.denied_response.status.code == 400, path
            assert json.loads(response.denied_response.body)["reason"] == "bad_request", path
            status, problem = await http_check(server.http_authz_port, path)
            assert (status, problem.get("reason")) == (400, "bad_request"), path
        # the control: an unambiguous path is allowed on both
        response = await stub.Check(check_request("/admin/secret"))
        assert response.status.code == 0 and response.HasField("ok_response")
        assert (await http_check(server.http_authz_port, "/admin/secret"))[0] == 200
