"""The check edge: read -> decide -> render -> record, one fail-closed guard, any adapter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.checktool import build_check_request
from extauthz.decision import Decision, Outcome
from extauthz.edge import DECISIONS, GRPC, GRPC_BYTES, CheckEdge, decide
from extauthz.errors import BadRequestError, Reason
from extauthz.explain import Trace
from extauthz.http_authz import HttpAuthzServer
from extauthz.metrics import NO_ROUTE_LABEL, CheckRecorder
from extauthz.pipeline import Engine
from extauthz.types import RequestView
from tests.support.configs import api_key_config, started_engine

KEY = "eak_edge-test-key-0000000000000000"
CONFIG = api_key_config(KEY)  # the shared smallest protected configuration


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with started_engine(tmp_path, CONFIG) as started:
        yield started


def counted(engine: Engine, route: str, outcome: str, reason: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "extauthz_checks_total", {"route": route, "outcome": outcome, "reason": reason})
    return value or 0.0


def allowed_request() -> Any:
    return build_check_request({"path": "/api/x", "headers": {"x-api-key": KEY}})


async def test_grpc_adapter_answers_a_check_response_and_records_it_once(engine: Engine) -> None:
    edge: CheckEdge[Any, Any] = CheckEdge(engine, GRPC, CheckRecorder(engine.metrics))
    response = await edge.answer(allowed_request())
    assert response.status.code == 0 and response.HasField("ok_response")
    assert counted(engine, "api", "allow", "ok") == 1


async def test_serialized_check_request_in_serialized_check_response_out(engine: Engine) -> None:
    """What a gRPC call carried as an HTTP body needs: bytes in, bytes out, one call."""
    edge = CheckEdge(engine, GRPC_BYTES, CheckRecorder(engine.metrics))
    answer = await edge.answer(allowed_request().SerializeToString())
    response = external_auth_pb2.CheckResponse.FromString(answer)
    assert response.status.code == 0
    assert ("x-auth-subject", "alice") in [(h.header.key, h.header.value)
                                           for h in response.ok_response.headers]
    # bytes that are no CheckRequest: a 400 deny, encoded as a CheckResponse all the same
    denied = external_auth_pb2.CheckResponse.FromString(await edge.answer(b"\xff\xff\xff"))
    assert denied.status.code == 3  # INVALID_ARGUMENT
    assert denied.denied_response.status.code == 400
    assert counted(engine, NO_ROUTE_LABEL, "deny", "bad_request") == 1


async def test_an_unreadable_request_is_denied_with_its_own_status(engine: Engine) -> None:
    class Unreadable:
        @staticmethod
        def read(raw: Any) -> RequestView:
            raise BadRequestError(Reason.BAD_REQUEST, "not a check request")

        @staticmethod
        def render(decision: Decision, raw: Any) -> Decision:
            return decision

    trace = Trace()
    edge = CheckEdge(engine, Unreadable(), CheckRecorder(engine.metrics))
    decision = await edge.answer(object(), trace)
    assert (decision.http_status, decision.reason) == (400, Reason.BAD_REQUEST)
    assert trace.notes == ["the request could not be read: bad_request"]
    assert counted(engine, NO_ROUTE_LABEL, "deny", "bad_request") == 1


async def test_a_render_that_fails_becomes_a_rendered_503(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The one guard: the engine allowed, the encoding failed -> fail closed, and the 503 is
    rendered by the same adapter and recorded instead of the allow."""

    class Fragile:
        @staticmethod
        def read(raw: Any) -> RequestView:
            return GRPC.read(raw)

        @staticmethod
        def render(decision: Decision, raw: Any) -> Decision:
            if decision.allowed:
                raise ValueError("cannot encode")
            return decision

    edge = CheckEdge(engine, Fragile(), CheckRecorder(engine.metrics))
    with caplog.at_level(logging.ERROR, logger="extauthz.edge"):
        decision = await edge.answer(allowed_request())
    assert (decision.http_status, decision.reason) == (503, Reason.INTERNAL_ERROR)
    assert decision.outcome is Outcome.DENY
    assert "could not render an answer" in caplog.text
    assert counted(engine, NO_ROUTE_LABEL, "deny", "internal_error") == 1
    assert counted(engine, "api", "allow", "ok") == 0


async def test_refused_is_a_rendered_and_recorded_503(engine: Engine) -> None:
    edge: CheckEdge[Any, Any] = CheckEdge(engine, GRPC, CheckRecorder(engine.metrics))
    response = edge.refused(allowed_request())
    assert response.denied_response.status.code == 503
    assert counted(engine, NO_ROUTE_LABEL, "deny", "internal_error") == 1


async def test_the_offline_tools_get_the_decision_of_the_grpc_path(engine: Engine) -> None:
    trace = Trace()
    decision = await decide(engine, allowed_request(), trace)
    assert decision.outcome is Outcome.ALLOW and decision.route == "api"
    assert trace.authn  # the explain trace was filled
    same = await CheckEdge(engine, DECISIONS).answer(allowed_request())
    assert same.upstream_headers == decision.upstream_headers
    assert counted(engine, "api", "allow", "ok") == 0  # the tools record nothing


class GrpcOverHttp:
    """A third transport in a few lines: a serialized CheckRequest as the body of an HTTP/1.1
    request, answered with the serialized CheckResponse, over the bounded httptools server."""

    @staticmethod
    def read(message: Any) -> RequestView:
        return GRPC_BYTES.read(bytes(message.body))

    @staticmethod
    def render(decision: Decision, message: Any) -> bytes:
        body = GRPC_BYTES.render(decision, b"")
        close = b"" if message.keep_alive else b"connection: close\r\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                + close + b"content-length: %d\r\n\r\n" % len(body) + body)


async def test_the_http_server_carries_another_protocol_through_an_adapter(
    engine: Engine,
) -> None:
    server = HttpAuthzServer(engine, adapter=GrpcOverHttp())
    checks = server.answer

    async def not_a_check() -> bytes:
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    def answer(message: Any) -> Any:  # requests that are no check: answered, not counted
        return checks(message) if message.url.endswith(b"/Check") else not_a_check()

    server.answer = answer
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /other HTTP/1.1\r\nhost: extauthz\r\ncontent-length: 0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 404 ")
        for body in (allowed_request().SerializeToString(), b"\xff\xff\xff"):
            writer.write(b"POST /envoy.service.auth.v3.Authorization/Check HTTP/1.1\r\n"
                         b"host: extauthz\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            answers = external_auth_pb2.CheckResponse.FromString(
                await asyncio.wait_for(reader.readexactly(length), 10))
            if body[:1] == b"\xff":
                assert answers.denied_response.status.code == 400
            else:
                assert answers.status.code == 0 and answers.HasField("ok_response")
        writer.close()
        assert counted(engine, "api", "allow", "ok") == 1
        assert counted(engine, NO_ROUTE_LABEL, "deny", "bad_request") == 1
        total = engine.metrics.registry.get_sample_value("extauthz_check_duration_seconds_count",
                                                         {"route": NO_ROUTE_LABEL})
        assert total == 1  # the 404 was not counted as a check
    finally:
        await server.stop(1)
