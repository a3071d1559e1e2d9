"""The ``rules:`` list, rule by rule: each kind's pass and fail, its reason code, order,
``any_of``/``all_of``, object-level rules, and the configuration errors that name their path."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from pydantic import ValidationError

from extauthz.authz.policy import Policy, PolicyError
from extauthz.authz.rules import RuleDenied, RuleResult
from extauthz.config.loader import issues_from_validation
from extauthz.config.schema import AuthzSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import AuthorizationError, Reason
from extauthz.types import AuthMethod, Headers, Identity, RequestView


def ident(
    *,
    subject: str = "alice",
    scopes: set[str] | None = None,
    claims: dict[str, Any] | None = None,
    consumer: str | None = None,
    method: AuthMethod = AuthMethod.JWT,
) -> Identity:
    return Identity(method=method, subject=subject, authenticator="idp", consumer=consumer,
                    scopes=frozenset(scopes or ()), claims=MappingProxyType(dict(claims or {})))


def view(
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    source: str = "10.1.2.3",
) -> RequestView:
    return RequestView(method=method, host="api.example.com", path=path,
                       headers=Headers(headers or {}), query=MappingProxyType(dict(query or {})),
                       source_address=source)


def policy(*rules: dict[str, Any], **extra: Any) -> Policy:
    return Policy.from_spec(AuthzSpec.model_validate({"rules": list(rules), **extra}))


def allowed(p: Policy, identity: Identity, v: RequestView | None = None,
            params: dict[str, str] | None = None) -> bool:
    try:
        p.evaluate(v or view(), identity, params or {})
    except AuthorizationError as exc:
        assert_403(exc)
        return False
    return True


def assert_403(exc: AuthorizationError) -> None:
    """Every policy denial is a 403 PERMISSION_DENIED on the wire."""
    decision = from_error(exc, "r")
    assert decision.http_status == 403 and decision.grpc_code is GrpcCode.PERMISSION_DENIED
    assert not decision.allowed and decision.reason is exc.reason


def denial(p: Policy, identity: Identity, v: RequestView | None = None,
           params: dict[str, str] | None = None) -> RuleDenied:
    with pytest.raises(RuleDenied) as info:
        p.evaluate(v or view(), identity, params or {})
    assert_403(info.value)
    return info.value


# ------------------------------------------------------------------------------------ scopes


def test_scopes_all_rule_denies_insufficient_scope_with_needed_scopes() -> None:
    p = policy({"scopes_all": ["orders:read", "orders:write"]})
    assert allowed(p, ident(scopes={"orders:read", "orders:write", "x"}))
    d = denial(p, ident(scopes={"orders:read"}))
    assert d.reason is Reason.INSUFFICIENT_SCOPE
    assert d.scope == "orders:read orders:write"
    assert d.rule == "rules[0]" and "orders:write" in d.detail


def test_scopes_any_rule() -> None:
    p = policy({"scopes_any": ["a", "b"]})
    assert allowed(p, ident(scopes={"b"}))
    d = denial(p, ident(scopes={"c"}))
    assert d.reason is Reason.INSUFFICIENT_SCOPE and d.scope == "a b"


# ------------------------------------------------------------------------------- roles/claims


KEYCLOAK = {"sub": "alice", "realm_access": {"roles": ["user", "auditor"]},
            "groups": "admins", "tenant": "acme", "level": 3, "verified": True}


def test_roles_any_of_from_nested_claim() -> None:
    p = policy({"roles": {"claim": "realm_access.roles", "any_of": ["admin", "auditor"]}})
    assert allowed(p, ident(claims=KEYCLOAK))
    d = denial(p, ident(claims={"realm_access": {"roles": ["user"]}}))
    assert d.reason is Reason.FORBIDDEN and d.rule == "rules[0]"
    # an API-key identity has no claims: no roles
    assert denial(p, ident(method=AuthMethod.API_KEY)).reason is Reason.FORBIDDEN


def test_roles_all_of_and_string_claim_is_one_role() -> None:
    p = policy({"roles": {"claim": "realm_access.roles", "all_of": ["user", "auditor"]}})
    assert allowed(p, ident(claims=KEYCLOAK))
    assert not allowed(p, ident(claims={"realm_access": {"roles": ["user"]}}))
    groups = policy({"roles": {"claim": "groups", "any_of": ["admins"]}})
    assert allowed(groups, ident(claims=KEYCLOAK))
    assert not allowed(groups, ident(claims={"groups": "admins-not"}))


def test_literal_dotted_claim_name_wins_over_path() -> None:
    p = policy({"roles": {"claim": "https://example.com/roles", "any_of": ["admin"]}})
    assert allowed(p, ident(claims={"https://example.com/roles": ["admin"]}))


@pytest.mark.parametrize(("matcher", "claims", "ok"), [
    ({"path": "tenant", "equals": "acme"}, {"tenant": "acme"}, True),
    ({"path": "tenant", "equals": "acme"}, {"tenant": "acme2"}, False),
    ({"path": "tenant", "equals": "acme"}, {}, False),
    ({"path": "level", "equals": 3}, {"level": 3}, True),
    ({"path": "level", "equals": 3}, {"level": "3"}, False),  # JSON equality: 3 is not "3"
    ({"path": "verified", "equals": True}, {"verified": True}, True),
    ({"path": "verified", "equals": True}, {"verified": 1}, False),  # true is not 1
    ({"path": "level", "equals": 1}, {"level": True}, False),
    ({"path": "tenant", "one_of": ["acme", "globex"]}, {"tenant": "globex"}, True),
    ({"path": "tenant", "one_of": ["acme", "globex"]}, {"tenant": "initech"}, False),
    ({"path": "tenant", "one_of": ["acme"]}, {"tenant": ["acme"]}, False),  # arrays aren't scalars
    ({"path": "realm_access.roles", "contains": "auditor"}, KEYCLOAK, True),
    ({"path": "realm_access.roles", "contains": "admin"}, KEYCLOAK, False),
    ({"path": "groups", "contains": "admins"}, KEYCLOAK, True),  # a string is a one-element set
    ({"path": "email", "regex": r"[^@]+@example\.com"}, {"email": "a@example.com"}, True),
    # anchored: the whole value must match
    ({"path": "email", "regex": r"[^@]+@example\.com"}, {"email": "a@example.com.evil"}, False),
    ({"path": "email", "regex": r".*"}, {"email": 5}, False),  # only strings match a regex
    ({"path": "tenant", "exists": True}, {"tenant": "x"}, True),
    ({"path": "tenant", "exists": True}, {"tenant": None}, False),  # null counts as absent
    ({"path": "tenant", "absent": True}, {}, True),
    ({"path": "tenant", "absent": True}, {"tenant": ""}, False),
])
def test_claim_matchers(matcher: dict[str, Any], claims: dict[str, Any], ok: bool) -> None:
    p = policy({"claim": matcher})
    assert allowed(p, ident(claims=claims)) is ok
    if not ok:
        assert denial(p, ident(claims=claims)).reason is Reason.FORBIDDEN


def test_regex_longer_than_the_limit_never_matches() -> None:
    p = policy({"claim": {"path": "x", "regex": "a*"}})
    assert allowed(p, ident(claims={"x": "a" * 8192}))
    assert not allowed(p, ident(claims={"x": "a" * 8193}))


# ------------------------------------------------------------------------ consumers/subjects


def test_consumers_allow_and_deny_lists() -> None:
    allow = policy({"consumers": ["partner-a", "partner-b"]})
    assert allowed(allow, ident(consumer="partner-a"))
    d = denial(allow, ident(consumer="partner-c"))
    assert d.reason is Reason.CONSUMER_NOT_ALLOWED
    assert denial(allow, ident(consumer=None)).reason is Reason.CONSUMER_NOT_ALLOWED
    deny = policy({"consumers": {"deny": ["partner-x"]}})
    assert allowed(deny, ident(consumer="partner-a"))
    assert allowed(deny, ident(consumer=None))  # a JWT caller is no denied consumer
    assert denial(deny, ident(consumer="partner-x")).reason is Reason.CONSUMER_NOT_ALLOWED


def test_subjects_spiffe_ids_exact_and_prefix() -> None:
    p = policy({"subjects": {"allow": ["spiffe://example.org/ns/payments/*",
                                       "spiffe://example.org/ns/ops/sa/admin"],
                             "deny": ["spiffe://example.org/ns/payments/sa/legacy"]}})
    assert allowed(p, ident(subject="spiffe://example.org/ns/payments/sa/api"))
    assert allowed(p, ident(subject="spiffe://example.org/ns/ops/sa/admin"))
    assert not allowed(p, ident(subject="spiffe://example.org/ns/ops/sa/admin2"))
    d = denial(p, ident(subject="spiffe://example.org/ns/payments/sa/legacy"))
    assert d.reason is Reason.FORBIDDEN and "denied" in d.detail
    assert not allowed(p, ident(subject="spiffe://example.org/ns/paymentsX/sa/api"))


def test_shorthand_subjects_are_exact() -> None:
    p = Policy.from_spec(AuthzSpec(subjects=["spiffe://x/*"]))
    assert not allowed(p, ident(subject="spiffe://x/a"))
    assert allowed(p, ident(subject="spiffe://x/*"))


# --------------------------------------------------------------------- request attributes


def test_methods_rule() -> None:
    p = policy({"methods": ["get", "HEAD"]})
    assert allowed(p, ident(), view(method="GET"))
    d = denial(p, ident(), view(method="DELETE"))
    assert d.reason is Reason.FORBIDDEN and "DELETE" in d.detail


@pytest.mark.parametrize(("source", "ok"), [
    ("10.1.2.3", True),
    ("10.9.0.1", False),          # in the denied /16
    ("192.168.0.1", False),       # not in an allowed network
    ("::ffff:10.1.2.3", True),    # IPv4-mapped IPv6 counts as IPv4
    ("fd00::1", True),
    ("", False),                  # no address: fail closed
    ("not-an-ip", False),
])
def test_source_cidrs(source: str, ok: bool) -> None:
    p = policy({"source": {"allow": ["10.0.0.0/8", "fd00::/8"], "deny": ["10.9.0.0/16"]}})
    assert allowed(p, ident(), view(source=source)) is ok


def test_headers_present_and_equal() -> None:
    present = policy({"header": {"name": "X-Tenant", "exists": True}})
    assert allowed(present, ident(), view(headers={"x-tenant": "acme"}))
    d = denial(present, ident(), view())
    assert d.reason is Reason.FORBIDDEN and d.detail == "header x-tenant absent"
    equal = policy({"header": {"name": "x-version", "equals": 2}})  # compared as "2"
    assert allowed(equal, ident(), view(headers={"x-version": "2"}))
    d = denial(equal, ident(), view(headers={"x-version": "secret-3"}))
    assert "secret-3" not in d.detail  # header values never reach logs or traces
    contains = policy({"header": {"name": "x-features", "contains": "beta"}})
    assert allowed(contains, ident(), view(headers={"x-features": "alpha, beta"}))
    assert not allowed(contains, ident(), view(headers={"x-features": "betamax"}))


def test_query_rule() -> None:
    p = policy({"query": {"name": "tenant", "one_of": ["acme", "globex"]}})
    assert allowed(p, ident(), view(query={"tenant": "acme"}))
    assert not allowed(p, ident(), view(query={"tenant": "x"}))
    assert not allowed(p, ident(), view())


# --------------------------------------------------------------------------- object level

OWNER_OR_ADMIN = {"any_of": [
    {"equal": {"param": "user_id", "claim": "sub"}},
    {"roles": {"claim": "realm_access.roles", "any_of": ["admin"]}},
]}


def test_only_the_owner_or_an_admin_may_read_a_users_orders() -> None:
    p = policy({"scopes_all": ["orders:read"]}, OWNER_OR_ADMIN)
    alice = ident(subject="alice", scopes={"orders:read"}, claims={"sub": "alice"})
    admin = ident(subject="root", scopes={"orders:read"},
                  claims={"sub": "root", "realm_access": {"roles": ["admin"]}})
    assert allowed(p, alice, params={"user_id": "alice"})
    assert allowed(p, admin, params={"user_id": "alice"})
    d = denial(p, alice, params={"user_id": "bob"})
    assert d.reason is Reason.FORBIDDEN and d.rule == "rules[1]"
    assert "no alternative passed" in d.detail


def test_idor_other_users_orders_denied_even_with_scope() -> None:
    p = policy(OWNER_OR_ADMIN)
    mallory = ident(subject="mallory", scopes={"orders:read"}, claims={"sub": "mallory"})
    for victim in ("alice", "alice ", "Alice", "%61lice", ""):
        assert not allowed(p, mallory, params={"user_id": victim})


def test_absent_values_are_never_equal() -> None:
    p = policy({"equal": {"claim": "tenant", "header": "x-tenant"}})
    assert not allowed(p, ident(claims={}), view())
    assert not allowed(p, ident(claims={"tenant": ""}), view(headers={"x-tenant": ""}))
    d = denial(p, ident(claims={}), view())
    assert d.detail == "claim tenant (absent) != header x-tenant (absent)"


def test_tenant_claim_equals_header() -> None:
    p = policy({"equal": {"claim": "tenant", "header": "x-tenant"}})
    assert allowed(p, ident(claims={"tenant": "acme"}), view(headers={"x-tenant": "acme"}))
    d = denial(p, ident(claims={"tenant": "acme"}), view(headers={"x-tenant": "globex"}))
    assert d.reason is Reason.FORBIDDEN and "globex" not in d.detail  # header values hidden


def test_tenant_claim_equals_path_segment_numeric_claim() -> None:
    p = policy({"equal": {"param": "tenant_id", "claim": "tid"}})
    assert allowed(p, ident(claims={"tid": 42}), params={"tenant_id": "42"})
    assert not allowed(p, ident(claims={"tid": True}), params={"tenant_id": "True"})
    assert not allowed(p, ident(claims={"tid": [42]}), params={"tenant_id": "42"})


def test_param_equals_identity_subject_for_api_key_consumers() -> None:
    p = policy({"equal": {"param": "consumer", "identity": "consumer"}})
    key = ident(subject="partner-a", consumer="partner-a", method=AuthMethod.API_KEY)
    assert allowed(p, key, params={"consumer": "partner-a"})
    assert not allowed(p, key, params={"consumer": "partner-b"})
    assert not allowed(p, ident(consumer=None), params={"consumer": "partner-a"})


def test_query_equals_subject() -> None:
    p = policy({"equal": {"query": "owner", "identity": "subject"}})
    assert allowed(p, ident(subject="alice"), view(query={"owner": "alice"}))
    assert not allowed(p, ident(subject="alice"), view(query={"owner": "bob"}))


def test_all_of_inside_any_of() -> None:
    p = policy({"any_of": [
        {"all_of": [{"methods": ["GET"]}, {"scopes_all": ["read"]}]},
        {"scopes_all": ["admin"]},
    ]})
    assert allowed(p, ident(scopes={"read"}), view(method="GET"))
    assert not allowed(p, ident(scopes={"read"}), view(method="POST"))
    assert allowed(p, ident(scopes={"admin"}), view(method="POST"))
    # the failure of the first alternative is reported
    d = denial(p, ident(scopes={"read"}), view(method="POST"))
    assert d.reason is Reason.FORBIDDEN and d.rule == "rules[0]"


def test_any_of_all_scope_alternatives_report_insufficient_scope() -> None:
    p = policy({"any_of": [{"scopes_all": ["a"]}, {"scopes_all": ["b"]}]})
    d = denial(p, ident(scopes=set()))
    assert d.reason is Reason.INSUFFICIENT_SCOPE and d.scope == "a"


# -------------------------------------------------------------------------------- ordering


def test_first_failure_decides_in_list_order() -> None:
    p = policy({"methods": ["GET"]}, {"scopes_all": ["x"]})
    d = denial(p, ident(), view(method="POST"))
    assert d.rule == "rules[0]" and d.reason is Reason.FORBIDDEN
    p = policy({"scopes_all": ["x"]}, {"methods": ["GET"]})
    d = denial(p, ident(), view(method="POST"))
    assert d.rule == "rules[0]" and d.reason is Reason.INSUFFICIENT_SCOPE


def test_shorthand_keys_run_before_rules() -> None:
    p = policy({"methods": ["GET"]}, scopes_all=["x"])
    d = denial(p, ident(), view(method="POST"))
    assert d.rule == "scopes_all" and d.reason is Reason.INSUFFICIENT_SCOPE
    assert [r.label for r in p.rules] == ["scopes_all", "rules[0]"]


def test_trace_records_every_rule_and_skips_after_failure() -> None:
    p = policy({"methods": ["GET"]}, OWNER_OR_ADMIN, {"scopes_all": ["x"]})
    trace: list[RuleResult] = []
    with pytest.raises(RuleDenied):
        p.evaluate(view(), ident(claims={"sub": "alice"}), {"user_id": "bob"}, trace)
    assert [(r.rule, r.result) for r in trace] == [
        ("rules[0]", "pass"), ("rules[1]", "fail"), ("rules[2]", "skipped")]
    assert [(c.rule, c.result) for c in trace[1].children] == [
        ("rules[1].any_of[0]", "fail"), ("rules[1].any_of[1]", "fail")]
    assert trace[1].children[0].detail == "param user_id 'bob' != claim sub 'alice'"
    trace = []
    p.evaluate(view(), ident(claims={"sub": "alice"}, scopes={"x"}), {"user_id": "alice"}, trace)
    assert [c.result for c in trace[1].children] == ["pass", "skipped"]


def test_shadow_flag_is_compiled() -> None:
    assert policy({"methods": ["GET"]}, shadow=True).shadow
    assert not policy({"methods": ["GET"]}).shadow


# ---------------------------------------------------------------------- configuration errors


def schema_issues(rules: list[Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        AuthzSpec.model_validate({"rules": rules})
    return [str(i) for i in issues_from_validation(info.value)]


@pytest.mark.parametrize(("rule", "expected"), [
    ({"claim": {"path": "email", "regex": "(unclosed"}},
     "rules[0].claim.regex: invalid regular expression: missing ), unterminated subpattern"),
    ({"source": {"allow": ["10.0.0.0/8", "10.0.0.1/8"]}},
     "rules[0].source.allow: [1] '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
    ({"source": ["300.0.0.0/8"]}, "rules[0].source.allow: [0] '300.0.0.0/8'"),
    ({"methods": ["GET"], "scopes_all": ["x"]}, "rules[0]: a rule has exactly one kind"),
    ({}, "rules[0]: a rule has exactly one kind"),
    ({"claim": {"path": "x", "equals": "a", "exists": True}},
     "rules[0].claim: set exactly one of equals, one_of, contains, regex, exists, absent"),
    ({"equal": {"param": "user_id"}},
     "rules[0].equal: name exactly two of param, claim, header, query, identity"),
    ({"equal": {"param": "a", "identity": "email"}}, "rules[0].equal.identity"),
    ({"roles": {"claim": "groups", "any_of": ["a"], "all_of": ["b"]}},
     "rules[0].roles: set exactly one of any_of, all_of"),
    ({"any_of": [{"methods": ["G ET"]}]}, "rules[0].any_of[0].methods: not an HTTP method"),
    ({"consumers": {}}, "rules[0].consumers: set allow and/or deny"),
    ({"scopes: all": ["x"]}, "rules[0].scopes: all: unknown key"),
])
def test_schema_errors_name_their_path(rule: dict[str, Any], expected: str) -> None:
    issues = schema_issues([rule])
    assert any(i.startswith(expected) for i in issues), issues


def test_compile_errors_collected_with_paths() -> None:
    spec = AuthzSpec.model_validate({
        "consumers": ["ghost"],
        "rules": [
            {"consumers": {"allow": ["known", "phantom"]}},
            {"equal": {"param": "user", "claim": "sub"}},
            {"any_of": [{"cel": "request.method == "}]},
        ],
    })
    with pytest.raises(PolicyError) as info:
        Policy.from_spec(spec, consumers={"known"}, params={"user_id"})
    paths = [p for p, _ in info.value.issues]
    assert paths == ["consumers[0]", "rules[0].consumers.allow[1]", "rules[1].equal.param",
                     "rules[2].any_of[0].cel"]
    messages = dict(info.value.issues)
    assert messages["rules[1].equal.param"] == (
        "unknown path parameter 'user' (known: user_id)")
