"""Rate limits through a real Envoy 1.40, on both transports, and Envoy's global rate limiting fed
by extauthz's descriptors.

One extauthz process serves gRPC (deploy/envoy/envoy.yaml, deploy/envoy/envoy-ratelimit.yaml) and
Envoy's HTTP ext_authz protocol (deploy/envoy/envoy-http-authz.yaml). Each transport gets its own
consumer (3 requests per hour, in memory) so the two counts do not mix; the client must see the
same 200s (with the remaining quota) and the same 429 (Retry-After, RateLimit-Policy, RateLimit,
problem+json) through either.

Envoy's rate limit filter is tested against a small in-test ``envoy.service.ratelimit.v3``
server that records the descriptors Envoy sends (the real envoyproxy/ratelimit service is a Go
program with no package on PyPI/Debian/npm, so it is not run here).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import ENVOY_CONFIG, EnvoyPorts, render_config, start_envoy
from extauthz.demo.httpclient import Response, request
from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok
from extauthz.keys import hash_api_key
from tests.e2e.helpers import PROBLEM_JSON, upstream_headers
from tests.support.processes import STARTUP_TIMEOUT

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
GRPC_KEY = "eak_ratelimit-grpc-key-0123456789"
HTTP_KEY = "eak_ratelimit-http-key-0123456789"
RLS_KEY = "eak_ratelimit-rls-key-01234567890"
RLS_PORT = 18081  # the rate limit service's port in envoy-ratelimit.yaml

CONFIG = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
rate_limiting:
  descriptors: [consumer, plan]
  limits:
    per-consumer:
      key: consumer
      windows: [{{requests: 3, seconds: 3600, name: hourly}}]
  plans:
    gold: []
consumers:
- name: grpc-client
  keys: [{{id: g1, hash: "{hash_api_key(GRPC_KEY)}"}}]
  limits: [per-consumer]
- name: http-client
  keys: [{{id: h1, hash: "{hash_api_key(HTTP_KEY)}"}}]
  limits: [per-consumer]
- name: rls-client
  plan: gold
  keys: [{{id: r1, hash: "{hash_api_key(RLS_KEY)}"}}]
routes:
- name: reports
  match: {{prefix: /reports/}}
  authn: [keys]
"""


@dataclass
class FakeRateLimitService:
    """``envoy.service.ratelimit.v3.RateLimitService``: records requests, answers ``code``."""

    requests: list[Any] = field(default_factory=list)
    over_limit: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # the gRPC method name
        from envoy.service.ratelimit.v3 import rls_pb2

        with self.lock:
            self.requests.append(request)
        code = (rls_pb2.RateLimitResponse.OVER_LIMIT if self.over_limit
                else rls_pb2.RateLimitResponse.OK)
        return rls_pb2.RateLimitResponse(overall_code=code)


@dataclass
class Envoys:
    grpc: str
    http: str
    rls: str
    service: FakeRateLimitService
    extauthz_admin: str


def _envoy(source: Path, ports: EnvoyPorts, log_dir: Path, name: str,
           extra: dict[int, int] | None = None) -> ManagedProcess:
    text = render_config(ports, source)
    for old, new in (extra or {}).items():
        assert f"port_value: {old}" in text
        text = text.replace(f"port_value: {old}", f"port_value: {new}")
    path = log_dir / f"{name}.yaml"
    path.write_text(text)
    return start_envoy(path, admin_port=ports.admin, log_path=log_dir / f"{name}.log",
                       timeout=STARTUP_TIMEOUT)


@pytest.fixture(scope="module")
def envoys(e2e_dir: Path, echo: BackgroundApp) -> Iterator[Envoys]:
    from envoy.service.ratelimit.v3 import rls_pb2_grpc

    config = e2e_dir / "extauthz.yaml"
    config.write_text(CONFIG)
    grpc_port, admin_port, authz_port, rls_port, *envoy_ports = free_ports(10)
    started: list[ManagedProcess] = []
    service = FakeRateLimitService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"{LOOPBACK}:{rls_port}")
    server.start()
    try:
        argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{admin_port}"),
                "--http-authz-address", f"{LOOPBACK}:{authz_port}"]
        extauthz = ManagedProcess("extauthz", argv, e2e_dir / "extauthz.log").start()
        started.append(extauthz)
        extauthz.wait_ready(http_ok(f"http://{LOOPBACK}:{admin_port}/readyz"), STARTUP_TIMEOUT)
        listeners = []
        for i, (name, source, authz) in enumerate([
                ("envoy-grpc", ENVOY_CONFIG, grpc_port),
                ("envoy-http", DEPLOY / "envoy-http-authz.yaml", authz_port),
                ("envoy-rls", DEPLOY / "envoy-ratelimit.yaml", grpc_port)]):
            ports = EnvoyPorts(listener=envoy_ports[2 * i], admin=envoy_ports[2 * i + 1],
                               extauthz=authz, echo=echo.port)
            extra = {RLS_PORT: rls_port} if name == "envoy-rls" else None
            started.append(_envoy(source, ports, e2e_dir, name, extra))
            listeners.append(f"http://{LOOPBACK}:{ports.listener}")
        yield Envoys(*listeners, service=service,
                     extauthz_admin=f"http://{LOOPBACK}:{admin_port}")
    finally:
        for proc in reversed(started):
            proc.stop()
        server.stop(grace=None)


def _get(base: str, key: str) -> Response:
    return request("GET", base + "/reports/q1", {"x-api-key": key})


RATE_HEADERS = ("retry-after", "ratelimit-policy", "ratelimit", "content-type")


def test_both_transports_answer_the_same_200s_and_the_same_429(envoys: Envoys) -> None:
    answers: dict[str, list[Response]] = {}
    for transport, base, key in (("grpc", envoys.grpc, GRPC_KEY), ("http", envoys.http, HTTP_KEY)):
        answers[transport] = [_get(base, key) for _ in range(4)]
    for transport, responses in answers.items():
        for remaining, response in zip((2, 1, 0), responses[:3], strict=True):
            seen = upstream_headers(response)  # 200 from the echo upstream
            assert not any(h.startswith("ratelimit") for h in seen), transport
            assert response.header("ratelimit-policy") == '"hourly";q=3;w=3600', transport
            assert response.header("ratelimit") == f'"hourly";r={remaining};t=1200', transport
        denied = responses[3]
        detail = f"{transport}: {denied.status} {denied.headers} {denied.text[:300]}"
        assert denied.status == 429, detail
        assert denied.header("content-type") == PROBLEM_JSON, detail
        assert denied.header("retry-after") == "1200", detail
        assert denied.header("ratelimit") == '"hourly";r=0;t=1200', detail
        problem = denied.problem()
        assert problem["reason"] == "rate_limited" and problem["status"] == 429, detail
        assert problem["violated-policies"] == ["hourly"], detail
    grpc_429, http_429 = answers["grpc"][3], answers["http"][3]
    assert [grpc_429.header(h) for h in RATE_HEADERS] == [http_429.header(h) for h in RATE_HEADERS]
    # extauthz counted them as rate_limited denials (gRPC RESOURCE_EXHAUSTED is unit-tested)
    metrics = request("GET", envoys.extauthz_admin + "/metrics").text
    assert 'extauthz_ratelimit_checks_total{limit="per-consumer",result="limited"} 2.0' in metrics
    assert 'reason="rate_limited"' in metrics


def test_envoy_global_rate_limit_receives_the_identity_descriptors(envoys: Envoys) -> None:
    service = envoys.service
    response = _get(envoys.rls, RLS_KEY)
    assert upstream_headers(response)["x-auth-consumer"] == "rls-client"
    with service.lock:
        sent = list(service.requests)
    assert len(sent) == 1
    assert sent[0].domain == "extauthz"
    descriptors = [[(e.key, e.value) for e in d.entries] for d in sent[0].descriptors]
    assert descriptors == [[("consumer", "rls-client"), ("plan", "gold")]]
    # Envoy enforces the service's answer: over the limit -> Envoy's own 429
    service.over_limit = True
    try:
        assert _get(envoys.rls, RLS_KEY).status == 429
    finally:
        service.over_limit = False
    # no plan -> Envoy builds no (consumer, plan) descriptor, and does not call the service
    # (never a descriptor with an empty value)
    before = len(service.requests)
    assert _get(envoys.rls, GRPC_KEY).status in (200, 429)  # its own extauthz limit may apply
    with service.lock:
        assert service.requests[before:] == []


def test_invalid_credential_is_denied_before_any_limit(envoys: Envoys) -> None:
    bad = "eak_not-a-configured-key-00000000000"
    for base in (envoys.grpc, envoys.http):
        response = _get(base, bad)
        assert response.status == 401 and response.header("ratelimit") is None
