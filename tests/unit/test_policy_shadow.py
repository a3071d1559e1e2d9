"""Shadow mode: a policy denial is computed, logged and counted as ``shadow_deny``, and the request
is allowed; authentication failures are still denied; shadowed routes are announced loudly."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import GrpcCode, Outcome
from extauthz.decisionlog import DecisionLog, record
from extauthz.errors import Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.respond.grpc import to_check_response
from extauthz.snapshot import Snapshot, compile_config
from tests.support.builders import make_view

KEY = "eak_shadow-test-key-00000000000000"
CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [read]}}]
routes:
- name: shadowed
  match: {{prefix: /s/}}
  authn: [keys]
  authz:
    shadow: true
    rules:
    - scopes_all: [write]
- name: shadowed-cel
  match: {{prefix: /c/}}
  authn: [keys]
  authz:
    shadow: true
    rules:
    - cel: 'request.headers["x-missing"] == "a"'
- name: enforced
  match: {{prefix: /e/}}
  authn: [keys]
  authz:
    rules:
    - scopes_all: [write]
"""


def snapshot(tmp_path: Path) -> Snapshot:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return compile_config(load_config(path), Metrics(),
                          registry={"api_key": ApiKeyAuthenticator.from_spec})


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = Engine(Metrics())
    eng.swap(snapshot(tmp_path))
    return eng


async def test_shadow_deny_is_allowed_with_the_reason_that_would_apply(engine: Engine) -> None:
    d = await engine.check(make_view("/s/x", headers={"x-api-key": KEY, "x-auth-subject": "m"}))
    assert d.allowed and d.outcome is Outcome.SHADOW_DENY
    assert d.http_status == 200 and d.grpc_code is GrpcCode.OK
    assert d.reason is Reason.INSUFFICIENT_SCOPE and d.rule == "rules[0]"
    # identity is injected and credentials stripped exactly as on an allow
    assert dict(d.upstream_headers)["x-auth-subject"] == "alice"
    assert "x-api-key" in d.remove_headers
    assert d.dynamic_metadata["shadow_deny"] == {"reason": "insufficient_scope",
                                                 "rule": "rules[0]"}
    response = to_check_response(d)
    assert response.status.code == 0 and response.HasField("ok_response")


async def test_shadow_covers_policy_errors(engine: Engine) -> None:
    d = await engine.check(make_view("/c/x", headers={"x-api-key": KEY}))
    assert d.allowed and d.outcome is Outcome.SHADOW_DENY and d.reason is Reason.POLICY_ERROR


async def test_shadow_passing_policy_is_a_plain_allow(engine: Engine, tmp_path: Path) -> None:
    d = await engine.check(make_view("/c/x", headers={"x-api-key": KEY, "x-missing": "a"}))
    assert d.outcome is Outcome.ALLOW and d.reason is Reason.OK and d.rule == ""
    assert "shadow_deny" not in d.dynamic_metadata


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, Reason.MISSING_CREDENTIAL),
    ({"x-api-key": "eak_wrong"}, Reason.INVALID_API_KEY),
])
async def test_shadow_never_lets_an_unauthenticated_request_through(
        engine: Engine, headers: dict[str, str], reason: Reason) -> None:
    d = await engine.check(make_view("/s/x", headers=headers))
    assert d.outcome is Outcome.DENY and not d.allowed
    assert d.http_status == 401 and d.grpc_code is GrpcCode.UNAUTHENTICATED
    assert d.reason is reason


async def test_enforced_route_still_denies(engine: Engine) -> None:
    d = await engine.check(make_view("/e/x", headers={"x-api-key": KEY}))
    assert d.outcome is Outcome.DENY and d.http_status == 403
    assert d.grpc_code is GrpcCode.PERMISSION_DENIED and d.reason is Reason.INSUFFICIENT_SCOPE
    assert d.rule == "rules[0]"


def test_swap_warns_per_shadowed_route_and_sets_the_gauge(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="extauthz.check"):
        Engine(metrics).swap(snapshot(tmp_path))
    warned = [r.getMessage() for r in caplog.records if "SHADOW" in r.getMessage()]
    assert len(warned) == 2
    assert any("route shadowed " in w for w in warned)
    assert any("route shadowed-cel " in w for w in warned)
    assert metrics.registry.get_sample_value("extauthz_shadow_routes") == 2


async def test_decision_log_records_shadow_deny_even_when_allows_are_sampled_out(
        engine: Engine) -> None:
    d = await engine.check(make_view("/s/x", headers={"x-api-key": KEY}))
    rec = record(make_view("/s/x"), d, 0.001)
    assert rec["outcome"] == "shadow_deny" and rec["reason"] == "insufficient_scope"
    assert rec["rule"] == "rules[0]" and rec["status"] == 200
    stream = io.StringIO()
    log = DecisionLog(stream, sample_allowed=0.0)
    allow = await engine.check(make_view("/c/x", headers={"x-api-key": KEY, "x-missing": "a"}))
    log.write(make_view("/c/x"), allow, 0.001)  # sampled out
    log.write(make_view("/s/x"), d, 0.001)      # always written
    log.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == ["shadow_deny"]
    assert KEY not in stream.getvalue()
