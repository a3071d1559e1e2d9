"""Rate limits through the pipeline (in process, memory store): which limits apply, the 429, the
headers, metrics, decision-log fields, explain, configuration errors, CEL keys, descriptors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import GrpcCode, Outcome
from extauthz.decisionlog import record
from extauthz.errors import ConfigError, Reason
from extauthz.explain import Trace
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.respond.grpc import to_check_response
from extauthz.snapshot import Snapshot, compile_config
from tests.support.builders import make_view

GOLD = "eak_ratelimit-gold-key-0123456789"
FREE = "eak_ratelimit-free-key-0123456789"
LONE = "eak_ratelimit-lone-key-0123456789"
REGISTRY = {"api_key": ApiKeyAuthenticator.from_spec}

CONFIG = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
rate_limiting:
  descriptors: [consumer, plan, route]
  limits:
    per-route:
      key: [route]
      windows: [{{requests: 1000, seconds: 60}}]
    gold-quota:
      key: consumer
      windows: [{{requests: 100, seconds: 1, name: gold-burst}}, {{requests: 5, seconds: 86400,
                 name: gold-daily}}]
    free-quota:
      key: consumer
      windows: [{{requests: 2, seconds: 3600}}]
    per-key:
      key: api_key
      headers_on_allow: false
      windows: [{{requests: 3, seconds: 3600}}]
    per-tenant:
      key: {{cel: 'request.headers["x-tenant"]'}}
      windows: [{{requests: 1, seconds: 3600}}]
    per-address:
      key: client_address
      windows: [{{requests: 2, seconds: 3600}}]
  plans:
    gold: [gold-quota]
    free: [free-quota]
consumers:
- name: acme
  plan: gold
  keys: [{{id: acme-1, hash: "{hash_api_key(GOLD)}"}}]
- name: tiny
  plan: free
  keys: [{{id: tiny-1, hash: "{hash_api_key(FREE)}"}}]
- name: lone
  limits: [per-key]
  keys: [{{id: lone-1, hash: "{hash_api_key(LONE)}"}}]
routes:
- name: tenants
  match: {{prefix: /tenants/}}
  authn: [keys]
  limits: [per-tenant]
- name: open
  match: {{prefix: /open/}}
  public: true
  limits: [per-address]
- name: api
  match: {{prefix: /v1/}}
  authn: [keys]
  limits: [per-route]
"""


def snapshot(tmp_path: Path, text: str = CONFIG, metrics: Metrics | None = None) -> Snapshot:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return compile_config(load_config(path), metrics or Metrics(), registry=REGISTRY)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def engine(tmp_path: Path, metrics: Metrics) -> Engine:
    return Engine(metrics, snapshot(tmp_path, metrics=metrics))


def _headers(decision: object) -> dict[str, str]:
    return dict(decision.response_headers)  # type: ignore[attr-defined]


async def test_plan_quota_then_429_with_retry_after_and_ietf_fields(engine: Engine) -> None:
    view = make_view("/v1/x", headers={"x-api-key": FREE})
    for remaining in (1, 0):
        d = await engine.check(view)
        assert d.allowed and d.http_status == 200
        h = _headers(d)
        assert h["ratelimit-policy"] == '"per-route";q=1000;w=60, "free-quota";q=2;w=3600'
        assert h["ratelimit"].endswith(f'"free-quota";r={remaining};t=1800')
    d = await engine.check(view)
    assert d.outcome is Outcome.DENY and d.http_status == 429
    assert d.grpc_code is GrpcCode.RESOURCE_EXHAUSTED and d.reason is Reason.RATE_LIMITED
    h = _headers(d)
    assert h["retry-after"] == "1800"
    assert h["content-type"] == "application/problem+json"
    assert h["ratelimit"] == '"per-route";r=997;t=1, "free-quota";r=0;t=1800'
    body = json.loads(d.body)
    assert body["status"] == 429 and body["reason"] == "rate_limited"
    assert body["violated-policies"] == ["free-quota"]
    # the 429 reaches Envoy as a denied_response with the same headers
    response = to_check_response(d)
    assert response.status.code == GrpcCode.RESOURCE_EXHAUSTED
    assert response.denied_response.status.code == 429
    sent = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert sent["retry-after"] == "1800" and sent["ratelimit-policy"].startswith('"per-route"')


async def test_two_windows_of_a_plan_and_consumers_are_counted_apart(engine: Engine) -> None:
    gold = make_view("/v1/x", headers={"x-api-key": GOLD})
    for _ in range(5):
        assert (await engine.check(gold)).allowed
    d = await engine.check(gold)
    assert d.http_status == 429
    assert json.loads(d.body)["violated-policies"] == ["gold-daily"]
    assert '"gold-burst";r=95;t=' in _headers(d)["ratelimit"]  # the burst window kept its count
    # another consumer is unaffected
    assert (await engine.check(make_view("/v1/x", headers={"x-api-key": FREE}))).allowed


async def test_allowed_response_headers_reach_envoy_as_response_headers_to_add(
        engine: Engine) -> None:
    d = await engine.check(make_view("/v1/x", headers={"x-api-key": GOLD}))
    response = to_check_response(d)
    added = {h.header.key: h.header.value for h in response.ok_response.response_headers_to_add}
    assert added["ratelimit-policy"].startswith('"per-route";q=1000;w=60')
    assert '"gold-daily";r=4;t=' in added["ratelimit"]
    # nothing of it goes to the upstream
    assert not any(k.startswith("ratelimit") for k, _ in d.upstream_headers)


async def test_headers_on_allow_false_hides_the_limit_until_it_denies(engine: Engine) -> None:
    view = make_view("/v1/x", headers={"x-api-key": LONE})
    for _ in range(3):
        d = await engine.check(view)
        assert d.allowed
        assert '"per-key"' not in _headers(d).get("ratelimit-policy", "")
    d = await engine.check(view)
    assert d.http_status == 429 and '"per-key";r=0;t=1200' in _headers(d)["ratelimit"]


async def test_cel_key_and_a_missing_key_value_skips_the_limit(
        engine: Engine, metrics: Metrics) -> None:
    acme = make_view("/tenants/a", headers={"x-api-key": GOLD, "x-tenant": "t1"})
    assert (await engine.check(acme)).allowed
    assert (await engine.check(acme)).http_status == 429
    other = make_view("/tenants/a", headers={"x-api-key": GOLD, "x-tenant": "t2"})
    assert (await engine.check(other)).allowed
    # no x-tenant header: the CEL key fails, the limit does not apply (never a shared bucket)
    bare = make_view("/tenants/a", headers={"x-api-key": GOLD})
    assert (await engine.check(bare)).allowed and (await engine.check(bare)).allowed
    skipped = metrics.registry.get_sample_value(
        "extauthz_ratelimit_checks_total", {"limit": "per-tenant", "result": "skipped"})
    limited = metrics.registry.get_sample_value(
        "extauthz_ratelimit_checks_total", {"limit": "per-tenant", "result": "limited"})
    assert (skipped, limited) == (2.0, 1.0)


async def test_public_route_limited_by_client_address(engine: Engine) -> None:
    def view(address: str) -> object:
        v = make_view("/open/x")
        return type(v)(**{**{f: getattr(v, f) for f in v.__slots__}, "source_address": address})

    for _ in range(2):
        assert (await engine.check(view("192.0.2.1"))).allowed  # type: ignore[arg-type]
    assert (await engine.check(view("192.0.2.1"))).http_status == 429  # type: ignore[arg-type]
    assert (await engine.check(view("192.0.2.2"))).allowed  # type: ignore[arg-type]


async def test_denied_requests_consume_no_quota(engine: Engine) -> None:
    bad = make_view("/v1/x", headers={"x-api-key": "eak_wrong-key-0000000000000000000"})
    for _ in range(5):
        assert (await engine.check(bad)).http_status == 401
    view = make_view("/v1/x", headers={"x-api-key": FREE})
    assert (await engine.check(view)).allowed


async def test_descriptors_in_dynamic_metadata(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/x", headers={"x-api-key": GOLD}))
    assert d.dynamic_metadata["ratelimit"] == {"consumer": "acme", "plan": "gold",
                                               "route": "api"}
    response = to_check_response(d)
    assert response.dynamic_metadata["ratelimit"]["plan"] == "gold"


async def test_decision_log_and_explain(engine: Engine) -> None:
    view = make_view("/v1/x", headers={"x-api-key": FREE})
    await engine.check(view)
    await engine.check(view)
    trace = Trace()
    d = await engine.check(view, trace)
    rec = record(view, d, 0.001)
    assert rec["rate_limit"] == {"per-route": {"result": "allowed", "remaining": 997},
                                 "free-quota": {"result": "limited", "remaining": 0}}
    assert [r["limit"] for r in trace.rate_limits] == ["per-route", "free-quota"]
    free = trace.rate_limits[1]
    assert free["result"] == "limited" and free["key"] == ["consumer"]
    assert free["windows"][0]["retry_after"] == 1800
    assert "rate limit free-quota (memory, key consumer): limited" in trace.render()


async def test_reload_keeps_in_memory_counts(tmp_path: Path) -> None:
    first = snapshot(tmp_path)
    engine = Engine(Metrics(), first)
    view = make_view("/v1/x", headers={"x-api-key": FREE})
    assert (await engine.check(view)).allowed
    assert (await engine.check(view)).allowed
    second = snapshot(tmp_path)
    second.inherit_from(first)
    engine.swap(second)
    assert (await engine.check(view)).http_status == 429


@pytest.mark.parametrize(("fragment", "where", "message"), [
    ("routes:\n- {name: r, match: {prefix: /}, public: true, limits: [nope]}",
     "routes[0].limits[0]", "unknown rate limit 'nope'"),
    ("consumers:\n- {name: c, plan: platinum}", "consumers[0].plan", "unknown plan 'platinum'"),
    ("rate_limiting:\n  limits:\n    l: {key: [route, consumer], windows: [{requests: 1, "
     "seconds: 1}]}\nroutes:\n- {name: r, match: {prefix: /}, public: true, limits: [l]}",
     "routes[0].limits[0]", "keyed by consumer, which a public route never has"),
    ("rate_limiting:\n  plans: {p: [nope]}", "rate_limiting.plans.p[0]", "unknown rate limit"),
    ("rate_limiting:\n  limits:\n    l: {key: {cel: 'request.path.size()'}, "
     "windows: [{requests: 1, seconds: 1}]}",
     "rate_limiting.limits.l.key[0].cel", "must evaluate to a string"),
    ("rate_limiting:\n  limits:\n    l: {key: consumer, store: redis, "
     "windows: [{requests: 1, seconds: 1}]}",
     "rate_limiting.limits.l.store", "needs rate_limiting.redis"),
    ("rate_limiting:\n  limits:\n    l: {key: consumer, windows: [{requests: 1, seconds: 1}, "
     "{requests: 2, seconds: 1}]}",
     "rate_limiting.limits.l.windows[1].name", "both named 'l-1s'"),
])
def test_configuration_errors_are_located(tmp_path: Path, fragment: str, where: str,
                                          message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        snapshot(tmp_path, fragment + "\n")
    assert any(i.path == where and message in i.message for i in caught.value.issues), \
        caught.value.issues


@pytest.mark.parametrize(("fragment", "where"), [
    ("rate_limiting:\n  limits:\n    l: {key: nobody, windows: [{requests: 1, seconds: 1}]}",
     "rate_limiting.limits.l.key"),
    ("rate_limiting:\n  limits:\n    l: {key: consumer, windows: [{requests: 0, seconds: 1}]}",
     "rate_limiting.limits.l.windows[0].requests"),
    ("rate_limiting:\n  redis: {url: 'redis://h', key_prefix: 'a{b'}", "rate_limiting.redis"),
    ("rate_limiting:\n  limits:\n    l: {key: consumer, windows: [{requests: 1, seconds: 1}], "
     "fallback: [{requests: 1, seconds: 1}]}", "rate_limiting.limits.l"),
])
def test_schema_errors_are_located(tmp_path: Path, fragment: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        snapshot(tmp_path, fragment + "\n")
    assert any(i.path.startswith(where) for i in caught.value.issues), caught.value.issues


def test_no_limits_no_limiter(tmp_path: Path) -> None:
    assert snapshot(tmp_path, "routes:\n- {name: r, match: {prefix: /}, public: true}\n") \
        .rate_limits is None


def test_policy_test_file_can_assert_a_429(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``extauthz test``: ``repeat`` sends a request N times; ``expect`` checks the last."""
    from extauthz.cli import main

    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "limits_test.yaml").write_text(f"""\
config: c.yaml
tests:
- name: the free plan allows two an hour
  request: {{path: /v1/x, headers: {{x-api-key: {FREE}}}}}
  repeat: 2
  expect:
    status: 200
    response_headers: {{ratelimit: '"per-route";r=998;t=1, "free-quota";r=0;t=1800'}}
- name: the third is refused with 429
  request: {{path: /v1/x, headers: {{x-api-key: {FREE}}}}}
  expect:
    status: 429
    reason: rate_limited
    grpc_code: RESOURCE_EXHAUSTED
    response_headers: {{retry-after: "1800"}}
""")
    assert main(["test", str(tmp_path)]) == 0, capsys.readouterr().out
    assert "2 passed, 0 failed" in capsys.readouterr().out


async def test_shadow_mode_does_not_waive_rate_limits(tmp_path: Path) -> None:
    """Shadow mode waives the *policy* only: a shadow-denied request is counted and limited."""
    text = CONFIG.replace("""- name: api
  match: {prefix: /v1/}
  authn: [keys]
  limits: [per-route]""", """- name: api
  match: {prefix: /v1/}
  authn: [keys]
  authz: {consumers: [tiny], shadow: true}
  limits: [per-key]""")
    engine = Engine(Metrics(), snapshot(tmp_path, text))
    view = make_view("/v1/x", headers={"x-api-key": GOLD})
    decisions = [await engine.check(view) for _ in range(4)]
    assert [d.outcome for d in decisions[:3]] == [Outcome.SHADOW_DENY] * 3
    assert decisions[3].http_status == 429 and decisions[3].reason is Reason.RATE_LIMITED
