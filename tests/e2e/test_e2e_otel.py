"""OpenTelemetry through a real Envoy on both transports, into a real OTLP receiver.

Envoy 1.40's own OpenTelemetry tracer exports over OTLP/gRPC and extauthz (``OTEL_*``
environment, the ``otel`` extra) over OTLP/HTTP (HTTP transport run) or OTLP/gRPC (gRPC
transport run) to the same receiver (:mod:`tests.support.otlp`; the OpenTelemetry Collector has no
package in the registries here). One request = one trace: Envoy's ingress span, Envoy's ext_authz
call span, and extauthz's ``extauthz.check`` span as that call span's child, with ``jwks.fetch``
and ``introspection`` spans as children of the check that caused them. No span attribute ever
carries a credential.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from extauthz.demo.background import BackgroundApp
from extauthz.demo.idp import DemoIdP
from extauthz.keys import hash_api_key
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.processes import Stack
from tests.support.transports import TRANSPORTS, start_transport_stack

KEY = "eak_otel-e2e-api-key-0123456789abcd"
OPAQUE = "opaque-" + "z" * 24
SERVICE = "extauthz-e2e"
SERVER, CLIENT = 2, 3  # OTLP span kinds


def envoy_tracing(otlp_port: int):  # type: ignore[no-untyped-def]
    """Add Envoy's OpenTelemetry tracer (OTLP/gRPC to ``otlp_port``, every request sampled)."""

    def edit(cfg: dict[str, Any]) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]
        hcm["tracing"] = {
            "random_sampling": {"value": 100},
            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "1s"},
                "service_name": "envoy"}}}
        cfg["static_resources"]["clusters"].append({
            "name": "otlp", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                             "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "otlp", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": otlp_port}}}}]}]}})
        # export within a fraction of a second (defaults: 5 s / 5 spans)
        cfg["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": 200,
            "tracing.opentelemetry.min_flush_spans": 1}}]}

    return edit


def _introspection_app() -> web.Application:
    async def introspect(request: web.Request) -> web.Response:
        form = await request.post()
        active = form.get("token") == OPAQUE
        return web.json_response({"active": active, "sub": "svc-7", "scope": "admin"}
                                 if active else {"active": False})

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    return app


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def introspection() -> Iterator[BackgroundApp]:
    app = BackgroundApp(_introspection_app, name="introspection").start()
    yield app
    app.close()


@pytest.fixture(scope="module", params=(*TRANSPORTS, "grpc-envoy", "grpc-native"))
def stack(request: pytest.FixtureRequest, e2e_dir: Path, idp: DemoIdP, echo: BackgroundApp,
          receiver: OtlpReceiver, introspection: BackgroundApp) -> Iterator[Stack]:
    transport: str = request.param
    base = e2e_dir / transport
    base.mkdir()
    (base / "client-secret").write_text("introspection-client-secret")
    config = base / "extauthz.yaml"
    config.write_text(f"""
authenticators:
  keys:
    api_key: {{sources: [{{header: x-api-key}}]}}
  idp:
    jwt:
      issuer: {idp.issuer}
      audiences: [{idp.audience}]
      algorithms: [RS256, ES256]
      jwks: {{url: {idp.jwks_uri}}}
      min_refetch_interval_seconds: 0
  opaque:
    introspection:
      endpoint: {introspection.base_url}/introspect
      client_id: extauthz
      client_secret_file: client-secret
consumers:
- name: app
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
routes:
- {{name: reports, match: {{prefix: /reports/}}, authn: [keys]}}
- {{name: profile, match: {{prefix: /profile/}}, authn: [idp]}}
- {{name: admin, match: {{prefix: /admin/}}, authn: [opaque]}}
""")
    env = {
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_EXPORTER": "otlp",
        # both OTLP exporters: gRPC for the gRPC transport run, HTTP for the other
        **({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.grpc_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true"} if transport == "grpc" else
           {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.http_port}"}),
    }
    running = start_transport_stack(transport, config, upstream_port=echo.port,
                                    log_dir=base / "logs",
                                    envoy_edit=envoy_tracing(receiver.grpc_port), env=env)
    running._extra["transport"] = transport
    try:
        yield running
    finally:
        running.stop()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def check_span(receiver: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    (span,) = receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == SERVICE
                                and s.name == "extauthz.check")
    return span


def envoy_call_span(receiver: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    """Envoy's span for its ext_authz call (gRPC: "...Authorization.Check egress"; HTTP: the
    async client's "async extauthz egress")."""
    (span,) = receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "envoy"
                                and s.kind == CLIENT and "egress" in s.name
                                and ("Authorization" in s.name or "extauthz" in s.name))
    return span


def assert_no_credential(receiver: OtlpReceiver, *secrets_: str) -> None:
    for span in receiver.spans:
        if span.service != SERVICE:
            continue
        text = repr(span.attributes)
        for secret in secrets_:
            assert secret not in text, (span.name, span.attributes)


def test_one_trace_client_envoy_extauthz_with_parent_links(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    header, trace_id, client_span = traceparent()
    r = stack.get("/reports/q1", {"x-api-key": KEY, "traceparent": header})
    assert r.status == 200, r.text
    ours = check_span(receiver, trace_id)
    call = envoy_call_span(receiver, trace_id)
    (ingress,) = receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "envoy"
                                   and s.kind == SERVER)
    assert ingress.parent_span_id == client_span  # Envoy continued the client's trace
    assert call.parent_span_id == ingress.span_id
    assert ours.parent_span_id == call.span_id  # extauthz's span is the call's child
    assert ours.kind == SERVER
    assert ours.attributes["extauthz.route"] == "reports"
    assert ours.attributes["extauthz.outcome"] == "allow"
    assert ours.attributes["extauthz.reason"] == "ok"
    assert ours.attributes["http.request.method"] == "GET"
    assert ours.attributes["http.response.status_code"] == 200
    assert ours.attributes["extauthz.authn.methods"] == ["api_key"]
    assert_no_credential(receiver, KEY)


def test_without_a_client_traceparent_the_check_is_still_envoys_child(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    # gRPC: the CheckRequest headers carry no traceparent then; Envoy's call metadata does
    r = stack.get("/reports/q2", {"x-api-key": KEY})
    assert r.status == 200
    # the trace Envoy started, as the upstream received it from Envoy's router
    trace_id = r.json()["headers"]["traceparent"].split("-")[1]
    ours = check_span(receiver, trace_id)
    assert ours.parent_span_id == envoy_call_span(receiver, trace_id).span_id


def test_a_deny_is_traced_with_its_reason(stack: Stack, receiver: OtlpReceiver) -> None:
    header, trace_id, _ = traceparent()
    bad = "eak_otel-wrong-key-00000000000000000"
    r = stack.get("/reports/q1", {"x-api-key": bad, "traceparent": header})
    assert r.status == 401
    ours = check_span(receiver, trace_id)
    assert ours.attributes["extauthz.outcome"] == "deny"
    assert ours.attributes["extauthz.reason"] == "invalid_api_key"
    assert ours.attributes["http.response.status_code"] == 401
    assert_no_credential(receiver, bad)


def test_jwks_refetch_is_a_child_span_of_the_check(
    stack: Stack, receiver: OtlpReceiver, idp: DemoIdP
) -> None:
    idp.rotate("ES256")  # a kid extauthz has not seen: the check refetches the JWKS
    token = idp.mint("alice")
    header, trace_id, _ = traceparent()
    r = stack.get("/profile/me", {"authorization": f"Bearer {token}", "traceparent": header})
    assert r.status == 200, r.text
    ours = check_span(receiver, trace_id)
    fetches = receiver.wait_for(lambda s: s.trace_id == trace_id and s.name == "jwks.fetch")
    assert fetches and all(f.parent_span_id == ours.span_id and f.kind == CLIENT
                           for f in fetches)
    assert fetches[0].attributes["url.full"] == idp.jwks_uri
    assert_no_credential(receiver, token, token.split(".")[2])


def test_introspection_is_a_child_span_of_the_check(
    stack: Stack, receiver: OtlpReceiver, introspection: BackgroundApp
) -> None:
    header, trace_id, _ = traceparent()
    r = stack.get("/admin/x", {"authorization": f"Bearer {OPAQUE}", "traceparent": header})
    assert r.status == 200, r.text
    ours = check_span(receiver, trace_id)
    (call,) = receiver.wait_for(lambda s: s.trace_id == trace_id and s.name == "introspection")
    assert call.parent_span_id == ours.span_id and call.kind == CLIENT
    assert call.attributes["url.full"] == introspection.base_url + "/introspect"
    assert ours.attributes["extauthz.authn.methods"] == ["introspection"]
    assert_no_credential(receiver, OPAQUE, "introspection-client-secret")


def test_the_exporter_protocol_was_the_one_configured(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    protocol = "grpc" if stack._extra["transport"] == "grpc" else "http"
    assert any(s.service == SERVICE and s.protocol == protocol for s in receiver.spans)
