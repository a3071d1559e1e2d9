"""Issue 14 finding 6 and issue 13 finding 4 through the real Envoy (deploy/envoy/envoy.yaml, whose
ext_authz timeout is 1 s), with the **default** outbound timings (``fetch_timeout_seconds`` 0.5,
``refetch_wait_seconds`` 0.25): only the refresh interval and max_stale are shortened.

* An unknown ``kid`` while the IdP hangs is answered by extauthz itself (401 ``unknown_key``, a
  problem document) well within Envoy's timeout, not by Envoy's timeout (403, empty body).
* A reload (SIGHUP, or a configuration change) while the IdP is down keeps the last good keys:
  JWTs stay allowed within ``max_stale_seconds``.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from extauthz.demo.background import BackgroundApp
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import assert_denied, upstream_headers, wait_for_status
from tests.support.envoy_body import BodyStack, start_http_stack
from tests.support.processes import Stack, render_policies, write_config

REFRESH = 1.0
MAX_STALE = 30.0
PROFILE = "/profile/me"


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    return render_policies(
        e2e_dir / "policies",
        issuer=idp.issuer,
        jwt_overrides={"refresh_interval_seconds": REFRESH, "max_stale_seconds": MAX_STALE},
    )


@pytest.fixture(autouse=True)
def restore(stack: Stack, idp: DemoIdP) -> Iterator[None]:
    yield
    idp.mode = "ok"
    idp.up()


@pytest.fixture(scope="module")
def http_stack(
    extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path, stack: Stack
) -> Iterator[BodyStack]:
    """The same configuration behind the HTTP ext_authz transport (envoy-http-authz.yaml)."""
    running = start_http_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "http")
    try:
        yield running
    finally:
        running.stop()


def bearer(idp: DemoIdP) -> dict[str, str]:
    return {"authorization": f"Bearer {idp.mint('alice')}"}


def reloads(stack: Stack) -> float:
    match = re.search(r'^extauthz_config_reload_total\{result="success"\} (\S+)$',
                      stack.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_the_defaults_leave_room_within_envoys_timeout(extauthz_config: Path) -> None:
    jwt = yaml.safe_load(extauthz_config.read_text())["authenticators"]["demo-idp"]["jwt"]
    assert jwt.get("fetch_timeout_seconds", 0.5) <= 0.5  # the example states the default
    assert "refetch_wait_seconds" not in jwt  # the default bound, 0.25 s


def test_unknown_kid_while_the_idp_hangs_gets_extauthz_own_401(
    stack: Stack, idp: DemoIdP
) -> None:
    assert upstream_headers(stack.get(PROFILE, bearer(idp)))["x-auth-subject"] == "alice"
    idp.delay = 5.0
    idp.mode = "slow"
    staged = idp.new_key(publish=False)
    for attempt in range(3):  # the first starts a refetch, the next ones are rate-limited
        start = time.monotonic()
        r = stack.get(PROFILE, {"authorization": f"Bearer {idp.mint('eve', kid=staged)}"})
        elapsed = time.monotonic() - start
        assert_denied(r, 401, "unknown_key", challenge_contains=('error="invalid_token"',))
        assert elapsed < 0.9, (attempt, elapsed)
    # known keys are not held up by the hanging refetch
    start = time.monotonic()
    assert upstream_headers(stack.get(PROFILE, bearer(idp)))["x-auth-subject"] == "alice"
    assert time.monotonic() - start < 0.5


def test_unknown_kid_while_the_idp_hangs_gets_extauthz_own_401_over_http(
    http_stack: BodyStack, idp: DemoIdP
) -> None:
    ok = http_stack.get(PROFILE, bearer(idp))
    assert upstream_headers(ok)["x-auth-subject"] == "alice"
    idp.delay = 5.0
    idp.mode = "slow"
    staged = idp.new_key(publish=False)
    start = time.monotonic()
    r = http_stack.get(PROFILE, {"authorization": f"Bearer {idp.mint('eve', kid=staged)}"})
    elapsed = time.monotonic() - start
    assert_denied(r, 401, "unknown_key", challenge_contains=('error="invalid_token"',))
    assert elapsed < 0.9, elapsed


@pytest.mark.parametrize("how", ["sighup", "config-change"])
def test_reload_while_the_idp_is_down_keeps_the_last_good_keys(
    stack: Stack, idp: DemoIdP, how: str
) -> None:
    wait_for_status(stack, PROFILE, lambda: bearer(idp), 200, timeout=REFRESH * 3 + 2)
    idp.down()
    before = reloads(stack)
    if how == "sighup":
        stack.extauthz.signal(signal.SIGHUP)
    else:
        data = yaml.safe_load(stack.config.read_text())
        data["settings"]["realm"] = f"reloaded-{time.monotonic_ns()}"
        write_config(stack.config, data)
    deadline = time.monotonic() + 10
    while reloads(stack) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reloads(stack) > before, "extauthz did not reload"
    r = stack.get(PROFILE, bearer(idp))
    assert upstream_headers(r)["x-auth-subject"] == "alice"
    idp.up()
    wait_for_status(stack, PROFILE, lambda: bearer(idp), 200, timeout=REFRESH * 3 + 2)
