"""CEL conditions: compiled and type-checked at load (errors name their path), evaluated over
request/identity/route/params, and fail closed (``policy_error``) when evaluation fails."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.authz.cel import (
    ALL_NAMES,
    CelCompileError,
    activation_data,
    compile_expression,
    names_used,
    plain,
)
from extauthz.authz.policy import Policy
from extauthz.authz.rules import RuleDenied
from extauthz.config.schema import AuthzSpec
from extauthz.decision import GrpcCode, Outcome, from_error
from extauthz.errors import ConfigError, Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.types import AuthMethod, Headers, Identity, RequestView
from tests.support.builders import make_view
from tests.support.configs import compile_text

ALICE = Identity(
    method=AuthMethod.JWT, subject="alice", authenticator="idp",
    scopes=frozenset({"orders:read"}),
    claims=MappingProxyType({"sub": "alice", "tenant": "acme",
                             "realm_access": {"roles": ["user"]}, "big": 2**70}),
)
VIEW = RequestView(method="GET", host="api.example.com", path="/v1/users/alice/orders",
                   headers=Headers({"x-tenant": "acme", "user-agent": "curl/8"}),
                   query=MappingProxyType({"limit": "5"}), source_address="10.0.0.7")
PARAMS = {"user_id": "alice"}


def run(expression: str, identity: Identity = ALICE, view: RequestView = VIEW) -> None:
    Policy.from_spec(AuthzSpec.model_validate({"rules": [{"cel": expression}]}),
                     route="orders").evaluate(view, identity, PARAMS)


def verdict(expression: str, identity: Identity = ALICE, view: RequestView = VIEW) -> str:
    try:
        run(expression, identity, view)
    except RuleDenied as exc:
        decision = from_error(exc, "orders")
        assert decision.http_status == 403 and decision.grpc_code is GrpcCode.PERMISSION_DENIED
        return exc.reason.value
    return "allow"


@pytest.mark.parametrize("expression", [
    'request.method == "GET" && request.path.startsWith("/v1/")',
    'request.host == "api.example.com" && request.scheme == "http"',
    'request.headers["x-tenant"] == identity.claims.tenant',
    '"x-tenant" in request.headers && !("x-other" in request.headers)',
    'request.query.limit == "5" && int(request.query.limit) <= 100',
    'request.source == "10.0.0.7"',
    'identity.subject == params.user_id',
    'identity.method == "jwt" && identity.methods == ["jwt"] && identity.consumer == ""',
    '"orders:read" in identity.scopes',
    '"user" in identity.claims.realm_access.roles',
    'has(identity.claims.tenant) && !has(identity.claims.org)',
    'route.name == "orders"',
    'identity.claims.big > 1e20',  # an integer beyond int64 arrives as a double
    'request.headers["user-agent"].lowerAscii().startsWith("curl/")',  # strings extension
    'identity.scopes.exists(s, s.endsWith(":read"))',
])
def test_variables_and_functions(expression: str) -> None:
    assert verdict(expression) == "allow"


def test_false_denies_forbidden() -> None:
    with pytest.raises(RuleDenied) as info:
        run('identity.claims.tenant == "globex"')
    assert info.value.reason is Reason.FORBIDDEN and info.value.rule == "rules[0]"
    d = from_error(info.value, "orders")
    assert d.http_status == 403 and d.grpc_code is GrpcCode.PERMISSION_DENIED


@pytest.mark.parametrize("expression", [
    'request.headers["x-missing"] == "a"',   # no such key
    'identity.claims.org == "acme"',          # no such key
    "1 / (size(request.path) - size(request.path)) == 0",  # division by zero
    "int(request.headers['x-tenant']) > 0",   # conversion error
    "identity.claims.tenant",                 # dyn that turns out to be a string
    "identity.claims.realm_access.roles[5] == 'admin'",
])
def test_evaluation_errors_fail_closed_with_policy_error(expression: str) -> None:
    with pytest.raises(RuleDenied) as info:
        run(expression)
    assert info.value.reason is Reason.POLICY_ERROR
    d = from_error(info.value, "orders")
    assert d.http_status == 403 and d.grpc_code is GrpcCode.PERMISSION_DENIED
    assert '"reason":"policy_error"' in d.body and "CEL" not in d.body  # detail stays private
    assert info.value.description == "policy evaluation error"
    assert info.value.detail.startswith("CEL evaluation error")


@pytest.mark.parametrize(("expression", "expected"), [
    ('false && request.headers["x-missing"] == "a"', "forbidden"),
    ('request.headers["x-missing"] == "a" && false', "forbidden"),  # errors are absorbed
    ('true || request.headers["x-missing"] == "a"', "allow"),
    ('request.headers["x-missing"] == "a" || true', "allow"),
    ('request.headers["x-missing"] == "a" || false', "policy_error"),
])
def test_logical_operators_absorb_errors_like_the_spec(expression: str, expected: str) -> None:
    assert verdict(expression) == expected


def test_cel_error_in_one_any_of_alternative_does_not_deny_if_another_passes() -> None:
    p = Policy.from_spec(AuthzSpec.model_validate({"rules": [{"any_of": [
        {"cel": 'request.headers["x-missing"] == "a"'}, {"scopes_all": ["orders:read"]}]}]}))
    p.evaluate(VIEW, ALICE, PARAMS)


@pytest.mark.parametrize(("expression", "message"), [
    ("request.method == ", "1:19: Syntax error"),
    ("reqest.method == 'GET'", "1:7: undeclared reference to 'reqest.method'"),
    ("'a' + 1 == 'a1'", "found no matching overload for '_+_' applied to '(string, int)'"),
    ("1 + 1", "must evaluate to a bool, not int"),
    ("'a'", "must evaluate to a bool, not string"),
    ("request.method.nosuchfn()", "undeclared reference to 'nosuchfn'"),
])
def test_compile_errors(expression: str, message: str) -> None:
    with pytest.raises(CelCompileError) as info:
        compile_expression(expression)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key("eak_cel-test-key-0000000000000000")}"}}]
routes:
- {{name: r0, match: {{prefix: /a/}}, authn: [keys]}}
- {{name: r1, match: {{prefix: /b/}}, authn: [keys]}}
- {{name: r2, match: {{prefix: /c/}}, authn: [keys]}}
- name: r3
  match: {{template: "/d/{{user_id}}"}}
  authn: [keys]
  authz:
    rules:
    - cel: 'params.user_id == identity.subject'
    - cel: 'request.method == '
    - any_of:
      - cel: 'identity.nope('
    - cel: '1 + 2'
"""


def test_bad_expression_is_a_config_error_naming_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        compile_text(tmp_path, CONFIG, registry={"api_key": ApiKeyAuthenticator.from_spec})
    text = [str(i) for i in info.value.issues]
    assert len(text) == 3, text
    assert text[0].startswith("routes[3].authz.rules[1].cel: 1:19: Syntax error")
    assert text[1].startswith("routes[3].authz.rules[2].any_of[0].cel: ")
    assert text[2] == "routes[3].authz.rules[3].cel: must evaluate to a bool, not int"


async def test_policy_error_through_the_pipeline_is_403(tmp_path: Path) -> None:
    key = "eak_cel-test-key-0000000000000000"
    config = CONFIG.split("- name: r3")[0] + """- name: r3
  match: {prefix: /d/}
  authn: [keys]
  authz:
    rules:
    - cel: 'request.headers["x-tenant"] == "acme"'
"""
    snapshot = compile_text(tmp_path, config, registry={"api_key": ApiKeyAuthenticator.from_spec})
    engine = Engine(Metrics(), snapshot)
    d = await engine.check(make_view("/d/x", headers={"x-api-key": key}))
    assert d.outcome is Outcome.DENY and d.http_status == 403
    assert d.grpc_code is GrpcCode.PERMISSION_DENIED
    assert d.reason is Reason.POLICY_ERROR and d.rule == "rules[0]"
    d = await engine.check(make_view("/d/x", headers={"x-api-key": key, "x-tenant": "acme"}))
    assert d.allowed and d.reason is Reason.OK


def test_plain_converts_claims_for_cel() -> None:
    value: Any = plain(MappingProxyType({"a": (1, 2), "b": frozenset({"x"}), "c": 2**64,
                                         "d": {1: None}, "e": True}))
    assert value == {"a": [1, 2], "b": ["x"], "c": float(2**64), "d": {"1": None}, "e": True}


def test_activation_data_members() -> None:
    data = activation_data(VIEW, ALICE, "orders", PARAMS)
    # metadata: the route's lookups (docs/authzen.md), an empty map without any
    assert set(data) == {"request", "identity", "route", "params", "metadata", "source"}
    assert data["metadata"] == {}
    assert set(data["request"]) == {"method", "path", "host", "scheme", "headers", "query",
                                    "source"}
    assert set(data["identity"]) == {"subject", "method", "methods", "consumer", "scopes",
                                     "claims"}


def test_only_named_variables_and_members_are_converted() -> None:
    assert names_used('request.method == "GET" && params.id == "x"') == {"request", "params"}
    assert names_used('request.headers["a"] == identity.claims.b') == {
        "request", "headers", "identity", "claims"}
    policy = Policy.from_spec(AuthzSpec.model_validate({"rules": [
        {"cel": 'request.method == "GET"'}, {"cel": "identity.subject == params.user_id"}]}))
    assert policy.cel_names == {"request", "identity", "params"}
    data = activation_data(VIEW, ALICE, "orders", PARAMS, policy.cel_names)
    assert set(data) == {"request", "identity", "params"}
    assert "headers" not in data["request"] and "claims" not in data["identity"]
    assert set(activation_data(VIEW, ALICE, "orders", PARAMS)) == {
        "request", "identity", "route", "params", "metadata", "source"}
    assert policy.cel_names <= ALL_NAMES


def test_a_computed_member_name_fails_closed() -> None:
    # "headers" is never written, so it is not converted: the lookup fails, and so does the rule
    assert verdict('request["head" + "ers"]["x-tenant"] == "acme"') == "policy_error"
    assert verdict('request["head" + "ers"]["x-tenant"] == "acme" || size(request.headers) > 0'
                   ) == "allow"
