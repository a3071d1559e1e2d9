"""``extauthz check --explain`` and the Trace the pipeline fills in only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.cli import main
from extauthz.explain import Trace
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from tests.support.builders import make_view
from tests.support.configs import compile_text

KEY = "eak_explain-test-key-0000000000000"
OTHER = "eak_explain-other-key-000000000000"
CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
  qkeys: {{api_key: {{sources: [{{query: key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [read]}}]
- name: bob
  keys: [{{id: k1, hash: "{hash_api_key(OTHER)}", scopes: []}}]
routes:
- name: health
  match: {{path: /healthz}}
  public: true
- name: writes
  match: {{prefix: /v1/, methods: [POST]}}
  authn: [keys]
- name: owned
  match: {{template: "/v1/accounts/{{owner}}/items"}}
  authn: [qkeys, keys]
  authz:
    scopes_all: [read]
    rules:
    - methods: [GET]
    - any_of:
      - equal: {{param: owner, identity: consumer}}
      - header: {{name: x-support-ticket, exists: true}}
    - header: {{name: x-trace, equals: "on"}}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(Metrics(), compile_text(tmp_path, CONFIG,
                                          registry={"api_key": ApiKeyAuthenticator.from_spec}))


async def test_trace_of_a_denied_request(engine: Engine) -> None:
    trace = Trace()
    d = await engine.check(make_view("/v1/accounts/bob/items", headers={"x-api-key": KEY}),
                           trace)
    assert d.http_status == 403 and d.rule == "rules[1]"
    assert trace.route == "owned"
    assert trace.selection == "the first route whose hosts, path and methods match"
    assert trace.passed_over == [("health", "path is not '/healthz'"),
                                 ("writes", "method GET not in [POST]")]
    assert trace.params == {"owner": "bob"}
    assert [(s.authenticator, s.result, s.subject) for s in trace.authn] == [
        ("qkeys", "absent", ""), ("keys", "ok", "alice")]
    assert [(r.rule, r.result) for r in trace.rules] == [
        ("scopes_all", "pass"), ("rules[0]", "pass"), ("rules[1]", "fail"),
        ("rules[2]", "skipped")]
    failed = trace.rules[2]
    assert failed.reason == "forbidden"
    assert [c.detail for c in failed.children] == [
        "param owner 'bob' != identity consumer 'alice'", "header x-support-ticket absent"]
    text = trace.render()
    assert "FAIL rules[1]: any of 2 alternatives -> forbidden" in text
    assert "keys [api_key]: ok (subject 'alice')" in text
    assert KEY not in text and KEY not in json.dumps(trace.to_json())


async def test_trace_records_invalid_credential_and_untried_methods(engine: Engine) -> None:
    trace = Trace()
    d = await engine.check(make_view("/v1/accounts/bob/items", query={"key": "eak_bad"},
                                     headers={"x-api-key": KEY}), trace)
    assert d.http_status == 401 and d.reason.value == "invalid_api_key"
    assert [(s.authenticator, s.result) for s in trace.authn] == [("qkeys", "invalid_api_key")]
    trace = Trace()
    await engine.check(make_view("/v1/accounts/alice/items", query={"key": KEY},
                                 headers={"x-trace": "on"}), trace)
    assert [(s.authenticator, s.result) for s in trace.authn] == [
        ("qkeys", "ok"), ("keys", "not tried")]
    assert all(r.result == "pass" for r in trace.rules)


async def test_trace_for_named_unknown_and_unmatched_routes(engine: Engine) -> None:
    trace = Trace()
    await engine.check(make_view("/healthz", ext={"route": "nope"}), trace)
    assert trace.route is None and "no route has that name" in trace.selection
    trace = Trace()
    await engine.check(make_view("/elsewhere"), trace)
    assert trace.route is None
    assert trace.selection == "no route's hosts, path and methods match"
    assert trace.notes == ["settings.unmatched is 'deny'"]
    trace = Trace()
    d = await engine.check(make_view("/v1/../healthz"), trace)
    assert d.http_status == 400 and "not normalized" in trace.notes[0]
    trace = Trace()
    await engine.check(make_view("/v1/x", ext={"route": "writes"}), trace)
    assert trace.route is None
    assert trace.selection.endswith("(method GET not in [POST]: the route does not apply)")
    trace = Trace()
    d = await engine.check(make_view("/healthz", ext={"route": "health"}), trace)
    assert d.allowed and trace.public and "named by Envoy" in trace.selection


async def test_same_decision_with_and_without_trace(engine: Engine) -> None:
    for headers in ({"x-api-key": KEY}, {"x-api-key": KEY, "x-trace": "on"},
                    {"x-api-key": OTHER, "x-support-ticket": "1"}, {}):
        view = make_view("/v1/accounts/alice/items", headers=headers)
        plain = await engine.check(view)
        traced = await engine.check(view, Trace())
        assert (plain.outcome, plain.http_status, plain.reason, plain.rule) == (
            traced.outcome, traced.http_status, traced.reason, traced.rule)


def test_cli_check_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    request = tmp_path / "r.yaml"
    request.write_text(yaml.safe_dump({"path": "/v1/accounts/bob/items",
                                       "headers": {"x-api-key": KEY}}))
    assert main(["check", "--config", str(config), "--request", str(request), "--explain"]) == 3
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["http_status"] == 403 and out["reason"] == "forbidden"
    assert out["rule"] == "rules[1]" and out["outcome"] == "deny"
    explain = out["explain"]
    assert explain["route"] == "owned" and explain["params"] == {"owner": "bob"}
    assert explain["authn"][1] == {"authenticator": "keys", "kind": "api_key", "result": "ok",
                                   "subject": "alice"}
    assert explain["rules"][2]["result"] == "fail"
    assert "route: owned" in captured.err and "FAIL rules[1]" in captured.err
    assert KEY not in captured.out + captured.err
    # without --explain: no trace
    assert main(["check", "--config", str(config), "--request", str(request)]) == 3
    captured = capsys.readouterr()
    assert "explain" not in json.loads(captured.out) and captured.err == ""
