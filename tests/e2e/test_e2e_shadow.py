"""Shadow mode through the real Envoy: the policy denial is counted and logged, the request goes
through; credentials are still enforced; shadowed routes are announced at startup.

This module runs the demo policies with the ``admin`` route (scope ``admin``; no demo API key has
it) switched to ``authz.shadow: true``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.demo import DEMO_API_KEY, LIMITED_API_KEY
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.processes import Stack, render_policies, write_config

ADMIN = "/admin/stats"


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    main = render_policies(e2e_dir / "policies", issuer=idp.issuer)
    data = yaml.safe_load(main.read_text())
    for route in data["routes"]:
        if route["name"] == "admin":
            route["authz"]["shadow"] = True
    return write_config(main, data)


def decision_lines(stack: Stack, path: str, count: int = 1, timeout: float = 5.0
                   ) -> list[dict[str, Any]]:
    """The decision-log records (JSON lines on extauthz's stdout) for requests to ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in stack.extauthz.log_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("path") == path:
                    found.append(rec)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def metric(stack: Stack, name: str, **labels: str) -> float:
    for line in stack.metrics().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_startup_announces_the_shadowed_route(stack: Stack) -> None:
    log = stack.extauthz.log_text()
    assert "route admin is in SHADOW mode" in log
    assert "route reports is in SHADOW mode" not in log
    assert metric(stack, "extauthz_shadow_routes") == 1.0


def test_policy_denial_is_allowed_counted_and_logged(stack: Stack) -> None:
    before = metric(stack, "extauthz_checks_total", route="admin", outcome="shadow_deny",
                    reason="insufficient_scope")
    path = ADMIN + "/shadow-probe?x=1"
    seen = upstream_headers(stack.get(path, {"x-api-key": DEMO_API_KEY}))
    # allowed like any other request: identity injected, credential stripped
    assert seen["x-auth-subject"] == "demo-client"
    assert "x-api-key" not in seen
    after = metric(stack, "extauthz_checks_total", route="admin", outcome="shadow_deny",
                   reason="insufficient_scope")
    assert after == before + 1
    [rec] = decision_lines(stack, ADMIN + "/shadow-probe")  # no query string in the log
    assert rec["outcome"] == "shadow_deny" and rec["reason"] == "insufficient_scope"
    assert rec["rule"] == "scopes_all" and rec["status"] == 200 and rec["route"] == "admin"
    assert rec["identity"]["consumer"] == "demo-client"
    assert DEMO_API_KEY not in stack.extauthz.log_text()


def test_a_passing_request_on_a_shadowed_route_is_a_plain_allow(stack: Stack,
                                                                 idp: DemoIdP) -> None:
    token = idp.mint("root", scopes=["admin"])
    path = ADMIN + "/allow-probe?x=1"
    seen = upstream_headers(stack.get(path, {"authorization": f"Bearer {token}"}))
    assert seen["x-auth-subject"] == "root"
    [rec] = decision_lines(stack, ADMIN + "/allow-probe")
    assert rec["outcome"] == "allow" and rec["reason"] == "ok" and "rule" not in rec


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "missing_credential"),
    ({"x-api-key": "eak_not_a_key_anybody_was_given"}, "invalid_api_key"),
])
def test_shadow_never_waives_authentication(stack: Stack, headers: dict[str, str],
                                            reason: str) -> None:
    r = stack.get(ADMIN, headers)
    assert_denied(r, 401, reason)
    assert metric(stack, "extauthz_checks_total", route="admin", outcome="deny",
                  reason=reason) >= 1


def test_other_routes_are_still_enforced(stack: Stack) -> None:
    r = stack.get("/reports/q1", {"x-api-key": LIMITED_API_KEY})
    assert_denied(r, 403, "insufficient_scope")
