"""The gRPC server in process: Check over a real channel, health, admin HTTP, graceful stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.server import Server, ServerOptions
from tests.support.configs import api_key_config

KEY = "eak_grpc-servicer-test-key-000000"

CONFIG = api_key_config(KEY)  # the shared smallest protected configuration


def check_request(path: str, headers: dict[str, str]) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", path, "svc.local"
    http.headers.update({":method": "GET", ":path": path, ":authority": "svc.local", **headers})
    return req


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


async def test_check_allow(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    resp = await stub.Check(check_request("/api/x", {"x-api-key": KEY}))
    assert resp.status.code == grpc.StatusCode.OK.value[0]
    headers = {h.header.key: h.header.value for h in resp.ok_response.headers}
    assert headers["x-auth-subject"] == "alice"
    assert "x-api-key" in resp.ok_response.headers_to_remove


async def test_check_deny_401(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    resp = await stub.Check(check_request("/api/x", {}))
    assert resp.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert resp.denied_response.status.code == 401
    assert json.loads(resp.denied_response.body)["reason"] == "missing_credential"


async def test_check_deny_no_route_403(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    resp = await stub.Check(check_request("/other", {"x-api-key": KEY}))
    assert resp.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert resp.denied_response.status.code == 403


async def test_empty_request_is_a_decision_not_an_error(
    stub: external_auth_pb2_grpc.AuthorizationStub,
) -> None:
    resp = await stub.Check(external_auth_pb2.CheckRequest())
    assert resp.status.code != 0
    assert resp.denied_response.status.code == 403


async def test_health_and_admin(server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/healthz") as r:
            assert r.status == 200
        async with session.get(base + "/readyz") as r:
            assert r.status == 200
        async with session.get(base + "/metrics") as r:
            text = await r.text()
            assert r.status == 200
            assert "extauthz_config_loads_total" in text


async def test_metrics_count_decisions(server: Server,
                                       stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    await stub.Check(check_request("/api/x", {"x-api-key": KEY}))
    await stub.Check(check_request("/api/x", {"x-api-key": "eak_bad"}))
    reg = server.metrics.registry
    assert reg.get_sample_value("extauthz_checks_total",
                                {"route": "api", "outcome": "allow", "reason": "ok"}) == 1
    assert reg.get_sample_value("extauthz_checks_total", {
        "route": "api", "outcome": "deny", "reason": "invalid_api_key"}) == 1
    assert reg.get_sample_value("extauthz_authentications_total",
                                {"method": "api_key", "result": "invalid_api_key"}) == 1
    assert reg.get_sample_value("extauthz_check_duration_seconds_count", {"route": "api"}) == 2


async def test_graceful_stop_finishes_in_flight_and_goes_not_serving(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=5))
    await srv.start()
    gate = asyncio.Event()
    original = srv.engine.check

    async def slow_check(view, trace=None):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(view, trace)

    srv.engine.check = slow_check  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        in_flight = asyncio.ensure_future(stub.Check(check_request("/api/x", {"x-api-key": KEY})))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(srv.stop())
        await asyncio.sleep(0.2)
        assert not srv.ready
        assert not stopping.done()
        gate.set()
        resp = await in_flight
        assert resp.status.code == 0  # the in-flight check completed with its real answer
        await stopping
        with pytest.raises(grpc.aio.AioRpcError):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)


async def test_bad_config_refuses_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("routes:\n- name: x\n")
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0"))
    from extauthz.errors import ConfigError

    with pytest.raises(ConfigError):
        await srv.start()
    assert srv.metrics.registry.get_sample_value(
        "extauthz_config_loads_total", {"result": "failure"}) == 1


async def test_hot_reload_swaps_valid_and_refuses_invalid(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                               decision_log=False, watch_interval_seconds=0.1))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            resp = await stub.Check(check_request("/public/x", {}))
            assert resp.denied_response.status.code == 403  # no route yet
            # A valid change: a public route appears.
            config.write_text(CONFIG + "- {name: pub, match: {prefix: /public/}, public: true}\n")
            for _ in range(50):
                await asyncio.sleep(0.1)
                resp = await stub.Check(check_request("/public/x", {}))
                if resp.status.code == 0:
                    break
            assert resp.status.code == 0
            reg = srv.metrics.registry
            assert reg.get_sample_value("extauthz_config_reload_total", {"result": "success"}) == 1
            # An invalid change is refused whole; the previous config keeps serving.
            config.write_text(CONFIG + "- {name: broken}\n")
            for _ in range(50):
                await asyncio.sleep(0.1)
                if reg.get_sample_value("extauthz_config_reload_total",
                                        {"result": "failure"}) == 1:
                    break
            assert reg.get_sample_value(
                "extauthz_config_reload_total", {"result": "failure"}) == 1
            resp = await stub.Check(check_request("/public/x", {}))
            assert resp.status.code == 0
            resp = await stub.Check(check_request("/api/x", {}))
            assert resp.denied_response.status.code == 401
            # SIGHUP-style explicit reload works too and reports the refusal
            assert await srv.reload() is False
    finally:
        await srv.stop()
