"""The Grafana dashboard and the Prometheus alert rules only use metrics, labels and label values
extauthz really exports; with promtool available the rules are also checked and unit-tested."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DEPLOY, REPO

DASHBOARD = DEPLOY / "observability" / "grafana-dashboard.json"
ALERTS = DEPLOY / "observability" / "alerts.yaml"
#: Labels Prometheus adds itself (target labels) or that belong to the histogram format.
IMPLICIT_LABELS = {"job", "instance", "le", "namespace", "pod"}


def label_names_of_collectors() -> dict[str, set[str]]:
    from extauthz.metrics import Metrics

    metrics = Metrics()
    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name:
            out[name] = set(getattr(value, "_labelnames", ()))
    return out


def sample_names() -> dict[str, set[str]]:
    labels = label_names_of_collectors()
    names: dict[str, set[str]] = {}
    from extauthz.metrics import Metrics

    for value in vars(Metrics()).values():
        kind = getattr(value, "_type", None)
        name = getattr(value, "_name", None)
        if not kind or not name:
            continue
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            kind, ("",)
        )
        for suffix in suffixes:
            names[name + suffix] = labels[name] | ({"le"} if suffix == "_bucket" else set())
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


SELECTOR = re.compile(r"\b(extauthz_[a-z_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_expr(expr: str, names: dict[str, set[str]]) -> None:
    used = SELECTOR.findall(expr)
    assert used, f"no extauthz metric in {expr!r}"
    for metric, matchers in used:
        assert metric in names, f"{metric} is not exported by extauthz ({expr!r})"
        allowed = names[metric] | IMPLICIT_LABELS
        for label, op, value in MATCHER.findall(matchers):
            assert label in allowed, f"{metric} has no label {label!r}"
            if op in ("=", "!=") and not value.startswith("$"):
                assert value in KNOWN_VALUES.get(label, {value}), f"{label}={value!r} never occurs"
    for group in BY.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            assert any(label in names[m] | IMPLICIT_LABELS for m, _ in used), (label, expr)


def _known_values() -> dict[str, set[str]]:
    from extauthz.decision import Outcome
    from extauthz.errors import Reason

    return {
        "outcome": {o.value for o in Outcome},
        "reason": {r.value for r in Reason},
        "result": {"ok", "hit", "miss", "success", "failure", "error", "timeout", "invalid"},
    }


KNOWN_VALUES = _known_values()


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "route"} <= variables
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_dashboard_covers_what_operators_asked_for() -> None:
    text = "\n".join(dashboard_exprs())
    for needle in (
        "extauthz_checks_total",
        "by (route, outcome, reason)",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.9,",
        "histogram_quantile(0.99,",
        "extauthz_check_duration_seconds_bucket",
        "extauthz_jwks_age_seconds",
        'extauthz_cache_requests_total{job=~"$job", result="hit"}',
        "extauthz_config_loads_total",
    ):
        assert needle in text, needle


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    names = sample_names()
    for expr in dashboard_exprs():
        check_expr(expr, names)


def test_alert_rules_use_exported_metrics_and_labels() -> None:
    names = sample_names()
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "ExtauthzNotReady",
        "ExtauthzConfigLoadFailures",
        "ExtauthzDenyRateSpike",
        "ExtauthzJwksStale",
        "ExtauthzHighP99Latency",
    }
    for rule in rules:
        check_expr(rule["expr"], names)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_the_sanity_check_catches_a_typo() -> None:
    with pytest.raises(AssertionError):
        check_expr('rate(extauthz_check_total{outcome="deny"}[5m])', sample_names())
    with pytest.raises(AssertionError):
        check_expr('rate(extauthz_checks_total{outcome="denied"}[5m])', sample_names())
    with pytest.raises(AssertionError):
        check_expr("sum by (issuer) (rate(extauthz_checks_total[5m]))", sample_names())


# --- promtool (Debian package `prometheus`); optional --------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana variables replaced by what they expand to, each query as a recording rule."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        concrete = concrete.replace("$route", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_when_they_should() -> None:
    """`promtool test rules tests/deploy/data/alerts_test.yaml`, exactly as alerts.yaml's header
    prints it, from the repository root: the test file names the real rule file (relative to
    itself) and the rendered annotations of every expected alert."""
    spec = yaml.safe_load((REPO / "tests/deploy/data/alerts_test.yaml").read_text())
    assert spec["rule_files"] == ["../../../deploy/observability/alerts.yaml"]
    result = subprocess.run(
        [PROMTOOL or "promtool", "test", "rules", "tests/deploy/data/alerts_test.yaml"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
