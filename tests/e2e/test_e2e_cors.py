"""The CORS preflight recipe of deploy/envoy/envoy.yaml through the real Envoy (issue 12, 6b).

Envoy's cors filter runs before ext_authz; the ``/reports/`` route has a CorsPolicy for the
origin ``https://app.example.com``. A real preflight (OPTIONS + Origin + Access-Control-Request-
Method) from that origin gets the CORS answer from Envoy with no credential and without extauthz
being asked; anything else -- an OPTIONS that is not a preflight, a preflight from another
origin, a preflight on a route without a policy -- is checked by extauthz as usual (401).
"""

from __future__ import annotations

import re

import pytest

from extauthz.demo import DEMO_API_KEY
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.processes import Stack

ORIGIN = "https://app.example.com"
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "GET",
             "access-control-request-headers": "x-api-key"}
CHALLENGE = 'ApiKey realm="extauthz", header="x-api-key"'


def checks(stack: Stack) -> float:
    """extauthz's check count (all routes, all outcomes)."""
    return sum(float(m.group(1)) for m in re.finditer(
        r'^extauthz_checks_total\{[^}]*\} ([0-9.e+]+)$', stack.metrics(), re.M))


def test_a_preflight_from_the_allowed_origin_is_answered_without_credentials(
        stack: Stack) -> None:
    before = checks(stack)
    r = stack.request("OPTIONS", "/reports/q1", PREFLIGHT)
    assert r.status == 200, r.text[:300]
    assert r.header("access-control-allow-origin") == ORIGIN
    assert r.header("access-control-allow-methods") == "GET, POST"
    assert "x-api-key" in (r.header("access-control-allow-headers") or "")
    assert r.header("access-control-max-age") == "600"
    assert r.body == b""  # Envoy answered; the upstream never saw it
    assert checks(stack) == before, "a preflight must not need (or reach) the check"
    stack.request("OPTIONS", "/reports/q1", {"origin": ORIGIN})  # not a preflight: checked
    assert checks(stack) == before + 1


def test_an_options_request_that_is_not_a_preflight_is_still_401(stack: Stack) -> None:
    # Origin but no Access-Control-Request-Method: a plain OPTIONS call to the API
    r = stack.request("OPTIONS", "/reports/q1", {"origin": ORIGIN})
    assert_denied(r, 401, "missing_credential", challenge=CHALLENGE)
    # ...and its 401 carries the CORS headers, so the page can read why it failed
    assert r.header("access-control-allow-origin") == ORIGIN
    # no Origin at all
    r = stack.request("OPTIONS", "/reports/q1", {"access-control-request-method": "GET"})
    assert_denied(r, 401, "missing_credential", challenge=CHALLENGE)
    assert r.header("access-control-allow-origin") is None


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.com.evil",
                                    "http://app.example.com", "null"])
def test_a_preflight_from_another_origin_is_checked_and_refused(stack: Stack,
                                                                origin: str) -> None:
    r = stack.request("OPTIONS", "/reports/q1", {**PREFLIGHT, "origin": origin})
    assert_denied(r, 401, "missing_credential", challenge=CHALLENGE)
    assert r.header("access-control-allow-origin") is None


@pytest.mark.parametrize("path", ["/admin/users", "/profile/me", "/reports/../admin/users",
                                  "/static/../admin/users"])
def test_a_preflight_on_a_route_without_a_cors_policy_is_checked(stack: Stack,
                                                                 path: str) -> None:
    r = stack.request("OPTIONS", path, PREFLIGHT)
    assert r.status == 401, r.text[:300]
    assert r.header("access-control-allow-origin") is None


def test_the_actual_request_needs_its_credential_and_gets_cors_headers(stack: Stack) -> None:
    assert_denied(stack.get("/reports/q1", {"origin": ORIGIN}), 401, "missing_credential")
    r = stack.get("/reports/q1", {"origin": ORIGIN, "x-api-key": DEMO_API_KEY})
    assert upstream_headers(r)["x-auth-subject"] == "demo-client"
    assert r.header("access-control-allow-origin") == ORIGIN
