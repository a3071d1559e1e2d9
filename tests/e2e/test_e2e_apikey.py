"""API keys through the real Envoy: client -> Envoy -> extauthz -> echo upstream.

Route ``reports`` (/reports/...): API key only, scope reports:read. The demo consumers and their
keys are documented in policies/extauthz.yaml.
"""

from __future__ import annotations

from extauthz.demo import DEMO_API_KEY, DISABLED_API_KEY, EXPIRED_API_KEY, LIMITED_API_KEY
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.processes import Stack

PATH = "/reports/q1"
CHALLENGE = 'ApiKey realm="extauthz", header="x-api-key"'


def test_valid_key_is_allowed_and_identifies_the_consumer(stack: Stack) -> None:
    seen = upstream_headers(stack.get(PATH, {"x-api-key": DEMO_API_KEY}))
    assert seen["x-auth-subject"] == "demo-client"
    assert seen["x-auth-consumer"] == "demo-client"
    assert seen["x-auth-method"] == "api_key"
    assert seen["x-auth-scopes"].split() == ["orders:read", "reports:read"]
    assert "x-api-key" not in seen


def test_no_key_is_401_with_an_apikey_challenge(stack: Stack) -> None:
    r = stack.get(PATH)
    assert_denied(r, 401, "missing_credential", challenge=CHALLENGE)
    # No credential at all: the challenge carries no error (RFC 6750 §3.1 by analogy).
    assert all("error=" not in c for c in r.header_values("www-authenticate"))


def test_wrong_key_is_401_invalid_token(stack: Stack) -> None:
    r = stack.get(PATH, {"x-api-key": "eak_not_a_key_anybody_was_given"})
    assert_denied(
        r, 401, "invalid_api_key", challenge_contains=(CHALLENGE, 'error="invalid_token"')
    )


def test_expired_key_is_401(stack: Stack) -> None:
    r = stack.get(PATH, {"x-api-key": EXPIRED_API_KEY})
    assert_denied(r, 401, "key_expired", challenge_contains=('error="invalid_token"',))


def test_disabled_key_is_401(stack: Stack) -> None:
    r = stack.get(PATH, {"x-api-key": DISABLED_API_KEY})
    assert_denied(r, 401, "key_disabled", challenge_contains=('error="invalid_token"',))


def test_key_without_the_scope_is_403(stack: Stack) -> None:
    r = stack.get(PATH, {"x-api-key": LIMITED_API_KEY})
    assert_denied(r, 403, "insufficient_scope")


def test_valid_key_on_a_route_needing_another_scope_is_403(stack: Stack) -> None:
    r = stack.get("/admin/stats", {"x-api-key": DEMO_API_KEY})
    assert_denied(r, 403, "insufficient_scope")
    # An API key is not a bearer token: no RFC 6750 insufficient_scope challenge for it.
    assert not any(c.startswith("Bearer") for c in r.header_values("www-authenticate"))


def test_empty_key_is_invalid_not_missing(stack: Stack) -> None:
    r = stack.get(PATH, [("x-api-key", "")])
    assert_denied(r, 401, "invalid_api_key")


def test_duplicated_key_header_is_not_accepted(stack: Stack) -> None:
    # Envoy joins repeated headers with "," before ext_authz sees them: never pick one of them.
    r = stack.get(PATH, [("x-api-key", DEMO_API_KEY), ("x-api-key", DEMO_API_KEY)])
    assert r.status == 401, r.text


def test_key_on_the_template_route(stack: Stack) -> None:
    seen = upstream_headers(stack.get("/v1/users/alice/orders", {"x-api-key": DEMO_API_KEY}))
    assert seen["x-auth-consumer"] == "demo-client"


def test_template_route_does_not_match_a_longer_path(stack: Stack) -> None:
    # Envoy's uri_template matcher does not match; the request falls to the catch-all route,
    # which names no extauthz route, and extauthz's own matchers find none: 403 no_route.
    r = stack.get("/v1/users/alice/orders/7", {"x-api-key": DEMO_API_KEY})
    assert_denied(r, 403, "no_route")


def test_unknown_path_is_403_no_route(stack: Stack) -> None:
    assert_denied(stack.get("/nothing/here", {"x-api-key": DEMO_API_KEY}), 403, "no_route")


def test_metrics_count_the_decisions(stack: Stack) -> None:
    stack.get(PATH, {"x-api-key": DEMO_API_KEY})
    text = stack.metrics()
    assert "extauthz_" in text
    assert "reports" in text  # the route label


def test_header_name_is_case_insensitive(stack: Stack) -> None:
    seen = upstream_headers(stack.get(PATH, {"X-API-KEY": DEMO_API_KEY}))
    assert seen["x-auth-consumer"] == "demo-client"
    assert "x-api-key" not in seen
