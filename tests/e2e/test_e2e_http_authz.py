"""The HTTP ext_authz transport through the real Envoy: deploy/envoy/envoy-http-authz.yaml.

client -> Envoy (ext_authz ``http_service``) -> ``extauthz serve --http-authz-address`` -> echo.
The demo policies run unchanged: without context_extensions extauthz selects routes by its own
``match`` blocks. JWKS timings are short (as in test_e2e_failure.py) so the dependency-down case
plays out in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import validate_config
from extauthz.demo.idp import DemoIdP
from extauthz.http_authz import SOURCE_HEADER  # set by the example config's headers_to_add
from tests.e2e.helpers import assert_denied, upstream_headers, wait_for_status
from tests.support.processes import Stack, render_policies
from tests.support.transports import ENVOY_HTTP_CONFIG as ENVOY_HTTP
from tests.support.transports import start_transport_stack

REPORTS = "/reports/q1"
PROFILE = "/profile/me"
APIKEY_CHALLENGE = 'ApiKey realm="extauthz", header="x-api-key"'
MAX_STALE = 3.0


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    main = render_policies(
        e2e_dir / "policies",
        issuer=idp.issuer,
        jwt_overrides={"refresh_interval_seconds": 1.0, "max_stale_seconds": MAX_STALE,
                       "fetch_timeout_seconds": 0.3, "min_refetch_interval_seconds": 0.5},
    )
    # two routes whose only difference is the client network they admit
    (main.parent / "routes.d" / "sources.yaml").write_text("""\
routes:
- name: from-loopback
  match: {prefix: /net/loopback/}
  authn: [demo-keys]
  authz: {rules: [{source: {allow: [127.0.0.0/8]}}]}
- name: from-ten
  match: {prefix: /net/ten/}
  authn: [demo-keys]
  authz: {rules: [{source: {allow: [10.0.0.0/8]}}]}
""")
    return main


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[Stack]:
    running = start_transport_stack("http", extauthz_config, upstream_port=echo.port,
                                    log_dir=e2e_dir / "logs")
    try:
        yield running
    finally:
        running.stop()


def test_the_example_config_validates_without_deprecation_warnings() -> None:
    result = validate_config(ENVOY_HTTP)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deprecated" not in (result.stdout + result.stderr).lower()


def test_api_key_allowed_with_identity_headers_and_the_key_stripped(stack: Stack) -> None:
    seen = upstream_headers(stack.get(REPORTS, {"x-api-key": DEMO_API_KEY}))
    assert seen["x-auth-subject"] == "demo-client"
    assert seen["x-auth-method"] == "api_key"
    assert seen["x-auth-scopes"].split() == ["orders:read", "reports:read"]
    assert "x-api-key" not in seen  # x-envoy-auth-headers-to-remove


def test_jwt_allowed_and_the_authorization_header_stripped(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice")
    seen = upstream_headers(stack.get(PROFILE, {"authorization": f"Bearer {token}"}))
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-method"] == "jwt"
    assert "authorization" not in seen


def test_spoofed_identity_headers_never_reach_the_upstream(stack: Stack) -> None:
    seen = upstream_headers(stack.get(REPORTS, {"x-api-key": DEMO_API_KEY,
                                                "x-auth-subject": "mallory",
                                                "x-auth-admin": "true"}))
    assert seen["x-auth-subject"] == "demo-client"
    assert "x-auth-admin" not in seen


def test_source_rules_see_the_client_address_envoy_sets(stack: Stack) -> None:
    key = {"x-api-key": DEMO_API_KEY}
    assert stack.get("/net/loopback/a", key).status == 200
    assert_denied(stack.get("/net/ten/a", key), 403, "forbidden")


def test_a_client_sent_source_header_is_overwritten_by_envoy(stack: Stack) -> None:
    # headers_to_add replaces the client's value with the real peer address (127.0.0.1)
    spoofed = {"x-api-key": DEMO_API_KEY, SOURCE_HEADER: "10.1.2.3"}
    assert_denied(stack.get("/net/ten/a", spoofed), 403, "forbidden")
    assert stack.get("/net/loopback/a", spoofed).status == 200


def test_no_credential_is_401_with_challenge_and_problem_body(stack: Stack) -> None:
    assert_denied(stack.get(REPORTS), 401, "missing_credential", challenge=APIKEY_CHALLENGE)


def test_wrong_key_is_401_invalid_token(stack: Stack) -> None:
    r = stack.get(REPORTS, {"x-api-key": "eak_not_a_key_anybody_was_given"})
    assert_denied(r, 401, "invalid_api_key",
                  challenge_contains=(APIKEY_CHALLENGE, 'error="invalid_token"'))


def test_insufficient_scope_is_403(stack: Stack) -> None:
    # /admin/ needs scope admin, which no demo key has
    assert_denied(stack.get("/admin/users", {"x-api-key": DEMO_API_KEY}), 403,
                  "insufficient_scope")


def test_no_route_is_403(stack: Stack) -> None:
    assert_denied(stack.get("/nowhere", {"x-api-key": DEMO_API_KEY}), 403, "no_route")


def test_dependency_down_is_503_fail_closed(stack: Stack, idp: DemoIdP) -> None:
    # extauthz answers 503 jwks_unavailable; a 5xx is an error to Envoy's HTTP client, so the
    # client gets status_on_error (503 in the example config) without extauthz's body.
    idp.down()
    try:
        r, _ = wait_for_status(stack, PROFILE,
                               lambda: {"authorization": f"Bearer {idp.mint('alice')}"}, 503,
                               timeout=MAX_STALE + 5)
        assert r.status == 503
        assert "x-auth-subject" not in r.text
        # API keys do not depend on the IdP
        assert stack.get(REPORTS, {"x-api-key": DEMO_API_KEY}).status == 200
    finally:
        idp.up()


def test_extauthz_unreachable_is_503_fail_closed(stack: Stack) -> None:
    # last in the module: extauthz stays stopped
    stack.extauthz.stop()
    deadline = time.monotonic() + 5
    r = stack.get(REPORTS, {"x-api-key": DEMO_API_KEY})
    while r.status == 200 and time.monotonic() < deadline:
        r = stack.get(REPORTS, {"x-api-key": DEMO_API_KEY})
    assert r.status == 503, r.text[:200]
    assert "demo-client" not in r.text
