"""Tracing: off means not even imported; on means a span per check with the right parent and
attributes, outbound child spans, and no trace context leaking into the caller."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from extauthz import tracing
from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.decision import GrpcCode, Outcome
from extauthz.errors import ConfigError
from extauthz.http_authz import _start_check
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.otel import OtelCheckTracer
from extauthz.pipeline import Engine
from extauthz.tracecontext import transport_parent
from tests.support.builders import make_view
from tests.support.configs import compile_text

KEY = "eak_tracing-test-key-0123456789abc"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADER_PARENT = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
])
def test_requested_follows_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert tracing.requested(env) is on


def test_off_means_opentelemetry_is_never_imported() -> None:
    code = (
        "import sys, asyncio\n"
        "from extauthz import cli, server, tracing\n"
        "from extauthz.pipeline import Engine\n"
        "from extauthz.metrics import Metrics\n"
        "from tests.support.builders import make_view\n"
        "assert tracing.configure_from_env({'OTEL_SERVICE_NAME': 'x'}) is False\n"
        "asyncio.run(Engine(Metrics()).check(make_view('/')))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert result.returncode == 0, result.stderr


def test_asked_for_but_not_installed_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "extauthz.otel", None)
    with pytest.raises(ConfigError) as err:
        tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert "pip install 'extauthz[otel]'" in str(err.value)
    assert tracing.state.tracer is None


def test_an_unknown_exporter_is_a_refusal() -> None:
    with pytest.raises(ConfigError) as err:
        tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert "OTEL_TRACES_EXPORTER='zipkin'" in str(err.value)
    assert tracing.state.tracer is None


def test_console_exporter_writes_to_stderr_never_the_decision_log_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tracer = OtelCheckTracer.from_env({"OTEL_TRACES_EXPORTER": "console,none"})
    with tracer.outbound("jwks.fetch", {"url.full": "https://idp.example/jwks"}):
        pass
    tracer.shutdown()
    out, err = capsys.readouterr()
    assert out == "" and '"name": "jwks.fetch"' in err


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.state.tracer = OtelCheckTracer(provider)
    try:
        yield exporter
    finally:
        tracing.state.tracer = None
        provider.shutdown()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    text = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
routes:
- {{name: orders, match: {{prefix: /v1/}}, authn: [keys]}}
"""
    snapshot = compile_text(tmp_path, text, registry={"api_key": ApiKeyAuthenticator.from_spec})
    return Engine(Metrics(), snapshot)


async def test_a_check_span_is_the_child_of_the_request_traceparent(
    spans: InMemorySpanExporter, engine: Engine
) -> None:
    d = await engine.check(make_view("/v1/x", method="POST", headers={
        "x-api-key": KEY, "traceparent": HEADER_PARENT, "authorization": "Bearer secret"}))
    assert d.outcome is Outcome.ALLOW
    (span,) = spans.get_finished_spans()
    assert span.name == "extauthz.check" and span.kind is trace.SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST", "extauthz.route": "orders", "extauthz.outcome": "allow",
        "extauthz.reason": "ok", "http.response.status_code": 200,
        "extauthz.authn.methods": ("api_key",)}


@pytest.mark.parametrize("header", [
    "00-zzzzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # not hex
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-" + "4" * 5000,  # oversized
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
])
async def test_a_malformed_traceparent_gives_a_root_span_and_the_same_decision(
    spans: InMemorySpanExporter, engine: Engine, header: str
) -> None:
    d = await engine.check(make_view("/v1/x", headers={
        "x-api-key": KEY, "traceparent": header, "tracestate": "evil=" + KEY}))
    assert d.outcome is Outcome.ALLOW
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert KEY not in repr(span.context.trace_state) and KEY not in repr(span.attributes)


async def test_client_tracestate_is_never_carried_into_the_span(
    spans: InMemorySpanExporter, engine: Engine
) -> None:
    await engine.check(make_view("/v1/x", headers={
        "x-api-key": KEY, "traceparent": HEADER_PARENT, "tracestate": "vendor=anything"}))
    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert len(span.context.trace_state) == 0


async def test_the_transport_parent_wins_over_the_header(
    spans: InMemorySpanExporter, engine: Engine
) -> None:
    other = "11111111111111111111111111111111"

    async def grpc_call() -> None:  # the servicer's own task, as with grpc.aio
        tracing.set_transport_parent(f"00-{other}-2222222222222222-01")
        d = await engine.check(make_view("/v1/x", headers={"traceparent": HEADER_PARENT}))
        assert d.grpc_code is GrpcCode.UNAUTHENTICATED

    await asyncio.create_task(grpc_call())
    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == other
    assert span.attributes is not None and span.attributes["extauthz.reason"] == \
        "missing_credential"
    assert transport_parent.get() is None  # set in that task's context only


async def test_outbound_calls_are_children_and_nothing_leaks_into_the_caller(
    spans: InMemorySpanExporter, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    @tracing.outbound_span("introspection", lambda url: {"url.full": tracing.safe_url(url)})
    async def fetch(url: str) -> None:
        await asyncio.sleep(0.01)  # suspends: the HTTP transport resumes the check as a task

    authenticator = engine.snapshot.routes.routes[0].authenticators[0]  # type: ignore[union-attr]
    original = authenticator.authenticate

    async def authenticate(view):  # type: ignore[no-untyped-def]
        await fetch("https://user:pw@idp.example:8443/introspect?token=secret#x")
        return await original(view)

    monkeypatch.setattr(authenticator, "authenticate", authenticate)
    coro = engine.check(make_view("/v1/x", headers={"x-api-key": KEY,
                                                    "traceparent": HEADER_PARENT}))
    task = _start_check(coro)  # exactly what the HTTP transport does (a task per check)
    assert not task.done()
    assert not trace.get_current_span().get_span_context().is_valid  # no leak
    decision = await task
    assert not trace.get_current_span().get_span_context().is_valid
    assert decision.outcome is Outcome.ALLOW
    child, check = spans.get_finished_spans()
    assert child.name == "introspection" and child.kind is trace.SpanKind.CLIENT
    assert child.parent is not None and child.parent.span_id == check.context.span_id
    assert dict(child.attributes or {}) == {"url.full": "https://idp.example:8443/introspect"}


async def test_off_the_decorator_is_a_plain_call() -> None:
    calls = []

    @tracing.outbound_span("redis", lambda op: {"db.operation.name": op})
    async def run(op: str) -> str:
        calls.append(op)
        return op.upper()

    assert tracing.state.tracer is None
    assert await run("get") == "GET" and calls == ["get"]


async def test_a_redis_call_is_a_child_span_with_the_operation_only(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    from extauthz.state.redis import RedisClient, RedisTarget
    from tests.support.redis_server import RedisServer

    server = RedisServer(data_dir=tmp_path, persist=False).start()
    client = RedisClient(RedisTarget(url=server.url, timeout_seconds=2.0), Metrics())
    try:
        await client.start()
        tracer = tracing.state.tracer
        assert tracer is not None

        async def check_like() -> object:  # a check's span context, then a Redis call
            with tracer.outbound("parent", {}):
                return await client.run("nonce", lambda r: r.set("k-secret-nonce", "1"))

        assert await check_like()
    finally:
        await client.close()
        server.stop()
    redis_spans = [s for s in spans.get_finished_spans() if s.name == "redis"]
    (parent,) = [s for s in spans.get_finished_spans() if s.name == "parent"]
    assert redis_spans and all(s.parent is not None
                               and s.parent.span_id == parent.context.span_id
                               for s in redis_spans)
    assert dict(redis_spans[0].attributes or {}) == {"db.system.name": "redis",
                                                     "db.operation.name": "nonce"}


async def test_a_cancelled_check_ends_its_span_as_an_error(
    spans: InMemorySpanExporter, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    authenticator = engine.snapshot.routes.routes[0].authenticators[0]  # type: ignore[union-attr]

    async def hang(view):  # type: ignore[no-untyped-def]
        started.set()
        await asyncio.sleep(30)

    monkeypatch.setattr(authenticator, "authenticate", hang)
    task = asyncio.create_task(engine.check(make_view("/v1/x", headers={"x-api-key": KEY})))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR


def test_serve_refuses_to_start_with_an_unusable_otel_environment(tmp_path: Path) -> None:
    import os

    config = tmp_path / "c.yaml"
    config.write_text("routes: [{name: p, match: {prefix: /}, public: true}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(config),
         "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"})
    assert result.returncode == 1
    assert "OTEL_TRACES_EXPORTER='zipkin'" in result.stderr
