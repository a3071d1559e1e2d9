"""Failure modes through the real Envoy: fail closed, and stale-but-bounded JWKS.

This module runs the demo policies with short JWKS timings (refresh every 1 s, keys usable for
3 s after the last successful fetch, 0.3 s fetch timeout) so outages play out in seconds.
After every test, extauthz is running again and the IdP healthy (fixture ``restore``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import PROBLEM_JSON, assert_denied, upstream_headers, wait_for_status
from tests.support.processes import Stack, render_policies
from tests.support.transports import GRPC_TRANSPORTS

#: every test here runs over both gRPC servers: grpc.aio and the Envoy front (conftest.py)
STACK_TRANSPORTS = GRPC_TRANSPORTS

REFRESH = 1.0
MAX_STALE = 3.0
FETCH_TIMEOUT = 0.3
PROFILE = "/profile/me"


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    return render_policies(
        e2e_dir / "policies",
        issuer=idp.issuer,
        jwt_overrides={
            "refresh_interval_seconds": REFRESH,
            "max_stale_seconds": MAX_STALE,
            "fetch_timeout_seconds": FETCH_TIMEOUT,
            "min_refetch_interval_seconds": 0.5,
        },
    )


@pytest.fixture(autouse=True)
def restore(stack: Stack, idp: DemoIdP) -> Iterator[None]:
    """After each test: extauthz running (not stopped), IdP up and answering."""
    yield
    # The IdP first: a restarted extauthz is ready only after its first JWKS fetch.
    idp.mode = "ok"
    idp.up()
    stack.extauthz.signal(signal.SIGCONT)
    if not stack.extauthz.running:
        stack.start_extauthz()


def wait_for_fresh_keys(idp: DemoIdP) -> None:
    """Wait for one successful JWKS fetch, so the stale clock starts now."""
    before = idp.hits["jwks"]
    deadline = time.monotonic() + REFRESH * 3 + 2
    while idp.hits["jwks"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idp.hits["jwks"] > before, "extauthz did not refetch the JWKS"
    time.sleep(0.1)  # let the keys install


def bearer(idp: DemoIdP) -> dict[str, str]:
    return {"authorization": f"Bearer {idp.mint('alice')}"}


# -- extauthz unavailable: Envoy must deny (failure_mode_allow: false) --------------------------


def _assert_envoy_failed_closed(r_status: int, body: bytes, content_type: str | None) -> None:
    assert r_status != 200
    # Envoy's own answer (status_on_error 503 in deploy/envoy/envoy.yaml, empty body), not
    # extauthz's problem document and not the upstream's.
    assert r_status == 503
    assert content_type != PROBLEM_JSON
    assert body == b""


def test_extauthz_stopped_means_denied(stack: Stack) -> None:
    stack.stop_extauthz()
    for path, headers in [("/public/hello", {}), ("/reports/q1", {"x-api-key": DEMO_API_KEY})]:
        r = stack.get(path, headers)
        _assert_envoy_failed_closed(r.status, r.body, r.header("content-type"))
    stack.start_extauthz()
    wait_for_status(stack, "/public/hello", {}, 200, timeout=5)


def test_extauthz_killed_means_denied(stack: Stack) -> None:
    stack.extauthz.kill()
    r = stack.get("/public/hello")
    _assert_envoy_failed_closed(r.status, r.body, r.header("content-type"))


def test_extauthz_hung_means_denied_after_envoys_timeout(stack: Stack) -> None:
    stack.extauthz.signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        r = stack.get("/public/hello", timeout=10)
        elapsed = time.monotonic() - start
    finally:
        stack.extauthz.signal(signal.SIGCONT)
    _assert_envoy_failed_closed(r.status, r.body, r.header("content-type"))
    assert 0.8 < elapsed < 3, elapsed  # grpc_service.timeout is 1s in deploy/envoy/envoy.yaml


# -- the IdP misbehaves: last good keys keep working, for max_stale_seconds ---------------------


@pytest.mark.parametrize("mode", ["error", "garbage", "slow"])
def test_idp_failing_keeps_the_last_good_keys(stack: Stack, idp: DemoIdP, mode: str) -> None:
    wait_for_fresh_keys(idp)
    idp.delay = 2.0
    idp.mode = mode  # type: ignore[assignment]
    # Every refresh starts with discovery (which now fails, so /jwks.json is not reached).
    before = idp.hits["discovery"]
    deadline = time.monotonic() + REFRESH * 2 + 1
    while idp.hits["discovery"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idp.hits["discovery"] > before, "no refresh attempt happened"
    time.sleep(FETCH_TIMEOUT + 0.1)
    r = stack.get(PROFILE, bearer(idp))
    assert upstream_headers(r)["x-auth-subject"] == "alice"


def test_idp_down_stale_keys_work_then_503_then_recovery(stack: Stack, idp: DemoIdP) -> None:
    wait_for_fresh_keys(idp)
    idp.down()
    down_at = time.monotonic()
    # Within max_stale_seconds of the last good fetch, the cached keys still verify.
    assert upstream_headers(stack.get(PROFILE, bearer(idp)))["x-auth-subject"] == "alice"
    # Past it, extauthz refuses to verify with keys it can no longer vouch for: 503.
    r, waited = wait_for_status(stack, PROFILE, lambda: bearer(idp), 503, timeout=MAX_STALE + 3)
    assert_denied(r, 503, "jwks_unavailable")
    # The keys were fetched just before the outage: they served for most of max_stale_seconds.
    assert MAX_STALE - 1.0 <= time.monotonic() - down_at <= MAX_STALE + 1.5, waited
    # API keys do not depend on the IdP.
    assert stack.get("/reports/q1", {"x-api-key": DEMO_API_KEY}).status == 200
    idp.up()
    wait_for_status(stack, PROFILE, lambda: bearer(idp), 200, timeout=REFRESH * 3 + 2)


def test_unknown_kid_while_idp_is_slow_is_answered_within_envoys_timeout(
    stack: Stack, idp: DemoIdP
) -> None:
    # A kid miss triggers a refetch; it is bounded by fetch_timeout_seconds (0.3 s), so extauthz
    # answers itself (401) instead of letting Envoy time out (403 without a problem body).
    wait_for_fresh_keys(idp)
    idp.delay = 5.0
    idp.mode = "slow"
    staged = idp.new_key(publish=False)
    start = time.monotonic()
    r = stack.get(PROFILE, {"authorization": f"Bearer {idp.mint('eve', kid=staged)}"})
    elapsed = time.monotonic() - start
    assert_denied(r, 401, "unknown_key", challenge_contains=('error="invalid_token"',))
    assert elapsed < 1.0, elapsed
