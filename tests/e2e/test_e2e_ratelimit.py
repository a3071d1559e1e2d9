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

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import ENVOY_CONFIG, EnvoyPorts, render_config, start_envoy
from extauthz.demo.httpclient import Response, request
from extauthz.demo.procs import (
    LOOPBACK,
    ManagedProcess,
    extauthz_argv,
    free_ports,
    http_ok,
    tcp_open,
)
from extauthz.keys import hash_api_key
from tests.e2e.helpers import PROBLEM_JSON, upstream_headers
from tests.support.processes import STARTUP_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "envoy"
GRPC_KEY = "eak_ratelimit-grpc-key-0123456789"
HTTP_KEY = "eak_ratelimit-http-key-0123456789"
RLS_KEY = "eak_ratelimit-rls-key-01234567890"
OUTAGE_KEY = "eak_ratelimit-outage-key-012345678"
RLS_PORT = 18081  # the rate limit service's port in envoy-ratelimit.yaml

CONFIG = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
rate_limiting:
  descriptors: [consumer, plan]
  # nothing listens there: Redis is down for the whole module
  redis: {{url: 'redis://127.0.0.1:DEAD_PORT', timeout_seconds: 0.05,
          retry_interval_seconds: 0.2}}
  limits:
    shared-strict:
      key: consumer
      store: redis
      windows: [{{requests: 100, seconds: 60}}]
    shared-lenient:
      key: consumer
      store: redis
      on_redis_error: fail_open
      windows: [{{requests: 100, seconds: 60}}]
      fallback: [{{requests: 2, seconds: 3600, name: local}}]
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
- name: outage-client
  keys: [{{id: o1, hash: "{hash_api_key(OUTAGE_KEY)}"}}]
routes:
- name: reports
  match: {{prefix: /reports/}}
  authn: [keys]
- {{name: strict, match: {{prefix: /strict/}}, authn: [keys], limits: [shared-strict]}}
- {{name: lenient, match: {{prefix: /lenient/}}, authn: [keys], limits: [shared-lenient]}}
"""


class FakeRateLimitService:
    """The test's view of tests/support/fake_rls.py (a separate process)."""

    def __init__(self, directory: Path) -> None:
        self.record = directory / "rls-requests.jsonl"
        self.flag = directory / "rls-over-limit"

    def requests(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def set_over_limit(self, over: bool) -> None:
        if over:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)


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
    config = e2e_dir / "extauthz.yaml"
    grpc_port, admin_port, authz_port, rls_port, dead_port, *envoy_ports = free_ports(11)
    config.write_text(CONFIG.replace("DEAD_PORT", str(dead_port)))
    started: list[ManagedProcess] = []
    service = FakeRateLimitService(e2e_dir)
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
        rls = ManagedProcess("fake-rls", [sys.executable, "-m", "tests.support.fake_rls",
                                          str(rls_port), str(service.record), str(service.flag)],
                             e2e_dir / "fake-rls.log", cwd=REPO).start()
        started.append(rls)
        rls.wait_ready(lambda: tcp_open(LOOPBACK, rls_port), STARTUP_TIMEOUT)
        yield Envoys(*listeners, service=service,
                     extauthz_admin=f"http://{LOOPBACK}:{admin_port}")
    finally:
        for proc in reversed(started):
            proc.stop()


def _get(base: str, key: str) -> Response:
    return request("GET", base + "/reports/q1", {"x-api-key": key})


RATE_HEADERS = ("retry-after", "ratelimit-policy", "ratelimit", "content-type")
#: T = 3600 s / 3: the values are 1200 s, minus the seconds the requests took (a loaded machine)
SLACK = 5


def _wait(value: str | None, prefix: str) -> int:
    """The integer after ``prefix`` in ``value`` (e.g. the ``t`` of a RateLimit item)."""
    assert value is not None and value.startswith(prefix), (value, prefix)
    return int(value.removeprefix(prefix))


def _normalized(response: Response) -> list[str | None]:
    """The rate-limit headers with the seconds rounded to the minute (the transports' requests
    are sent one after the other, so their waits may differ by a second)."""
    out = [response.header(h) for h in RATE_HEADERS]
    return [re.sub(r"\d{3,}", lambda m: str(round(int(m.group()), -2)), v) if v else v
            for v in out]


def test_both_transports_answer_the_same_200s_and_the_same_429(envoys: Envoys) -> None:
    answers: dict[str, list[Response]] = {}
    for transport, base, key in (("grpc", envoys.grpc, GRPC_KEY), ("http", envoys.http, HTTP_KEY)):
        answers[transport] = [_get(base, key) for _ in range(4)]
    for transport, responses in answers.items():
        for remaining, response in zip((2, 1, 0), responses[:3], strict=True):
            seen = upstream_headers(response)  # 200 from the echo upstream
            assert not any(h.startswith("ratelimit") for h in seen), transport
            assert response.header("ratelimit-policy") == '"hourly";q=3;w=3600', transport
            t = _wait(response.header("ratelimit"), f'"hourly";r={remaining};t=')
            assert 1200 - SLACK <= t <= 1200, transport
        denied = responses[3]
        detail = f"{transport}: {denied.status} {denied.headers} {denied.text[:300]}"
        assert denied.status == 429, detail
        assert denied.header("content-type") == PROBLEM_JSON, detail
        retry = int(denied.header("retry-after") or 0)
        assert 1200 - SLACK <= retry <= 1200, detail
        assert _wait(denied.header("ratelimit"), '"hourly";r=0;t=') == retry, detail
        problem = denied.problem()
        assert problem["reason"] == "rate_limited" and problem["status"] == 429, detail
        assert problem["violated-policies"] == ["hourly"], detail
    grpc_429, http_429 = answers["grpc"][3], answers["http"][3]
    assert _normalized(grpc_429) == _normalized(http_429)
    # extauthz counted them as rate_limited denials (gRPC RESOURCE_EXHAUSTED is unit-tested)
    metrics = request("GET", envoys.extauthz_admin + "/metrics").text
    assert 'extauthz_ratelimit_checks_total{limit="per-consumer",result="limited"} 2.0' in metrics
    assert 'reason="rate_limited"' in metrics


def test_envoy_global_rate_limit_receives_the_identity_descriptors(envoys: Envoys) -> None:
    service = envoys.service
    response = _get(envoys.rls, RLS_KEY)
    assert upstream_headers(response)["x-auth-consumer"] == "rls-client"
    assert service.requests() == [
        {"domain": "extauthz", "descriptors": [[["consumer", "rls-client"], ["plan", "gold"]]]}]
    # Envoy enforces the service's answer: over the limit -> Envoy's own 429
    service.set_over_limit(True)
    try:
        assert _get(envoys.rls, RLS_KEY).status == 429
    finally:
        service.set_over_limit(False)
    # no plan -> Envoy builds no (consumer, plan) descriptor, and does not call the service
    # (never a descriptor with an empty value)
    before = len(service.requests())
    assert _get(envoys.rls, OUTAGE_KEY).status == 200
    assert len(service.requests()) == before


def test_invalid_credential_is_denied_before_any_limit(envoys: Envoys) -> None:
    bad = "eak_not-a-configured-key-00000000000"
    for base in (envoys.grpc, envoys.http):
        response = _get(base, bad)
        assert response.status == 401 and response.header("ratelimit") is None


def test_redis_down_fails_closed_or_open_on_both_transports(envoys: Envoys) -> None:
    """Redis unreachable: the fail-closed limit answers 503 on both transports (gRPC: extauthz's
    denied_response; HTTP: Envoy's status_on_error, since a 5xx from an HTTP authorization
    service is an error to Envoy); the fail-open limit's local fallback (2 per hour on this
    replica) decides."""
    for base in (envoys.grpc, envoys.http):
        response = request("GET", base + "/strict/x", {"x-api-key": OUTAGE_KEY})
        assert response.status == 503, f"{base}: {response.status} {response.text[:200]}"
    grpc_strict = request("GET", envoys.grpc + "/strict/x", {"x-api-key": OUTAGE_KEY})
    assert grpc_strict.problem()["reason"] == "rate_limit_unavailable"
    lenient = [request("GET", base + "/lenient/x", {"x-api-key": OUTAGE_KEY})
               for base in (envoys.grpc, envoys.http, envoys.grpc, envoys.http)]
    assert [r.status for r in lenient] == [200, 200, 429, 429]
    assert lenient[0].header("ratelimit-policy") == '"local";q=2;w=3600'
    assert 1800 - SLACK <= _wait(lenient[1].header("ratelimit"), '"local";r=0;t=') <= 1800
    assert lenient[3].problem()["reason"] == "rate_limited"
    metrics = request("GET", envoys.extauthz_admin + "/metrics").text
    assert 'limit="shared-strict",result="unavailable"} 3.0' in metrics
    assert 'limit="shared-lenient",result="fallback_limited"} 2.0' in metrics
