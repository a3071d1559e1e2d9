"""Prometheus Operator objects for every layout: each overlays/prometheus-operator* build has a
ServiceMonitor that scrapes every extauthz process of its layout exactly once (endpoint port ->
Service port -> targetPort -> the container's metrics port) with annotation discovery switched
off, and the PrometheusRule generated from deploy/observability/alerts.yaml, which promtool
accepts."""

from __future__ import annotations

import copy
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MONITORED_BUILDS, REPO, build, extauthz_containers, flag, objects

ALERTS = REPO / "deploy" / "observability" / "alerts.yaml"
RULE_FILE = REPO / "deploy" / "k8s" / "components" / "prometheusrule" / "prometheusrule.yaml"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _pod_ports(
    objs: tuple[dict[str, Any], ...], service: dict[str, Any], target: str | int
) -> list[tuple[str, str, int]]:
    """(deployment, container, containerPort) a Service port's targetPort reaches."""
    found = []
    for deployment in (o for o in objs if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        if not _selects(service["spec"]["selector"], pod["metadata"]["labels"]):
            continue
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                if target in (port.get("name"), port["containerPort"]):
                    name = deployment["metadata"]["name"]
                    found.append((name, container["name"], port["containerPort"]))
    return found


def scraped(objs: tuple[dict[str, Any], ...]) -> list[tuple[str, str, int]]:
    """(deployment, container, containerPort) for every target the ServiceMonitors produce,
    following the Prometheus Operator's rules: an endpoint's `port` names a Service port of the
    selected Services, whose targetPort names a container port of the Service's pods."""
    services = [o for o in objs if o["kind"] == "Service"]
    targets = []
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services if _selects(selector, s["metadata"].get("labels", {}))]
        for endpoint in monitor["spec"]["endpoints"]:
            for service in selected:
                for port in service["spec"]["ports"]:
                    if port["name"] == endpoint["port"]:
                        targets += _pod_ports(objs, service, port["targetPort"])
    return targets


def metrics_endpoints(name: str) -> list[tuple[str, str, int]]:
    """(deployment, container, port) of every extauthz process's --http-address."""
    return [
        (deployment["metadata"]["name"], container["name"],
         int(flag(container["args"], "--http-address").rpartition(":")[2]))
        for deployment, container in extauthz_containers(name)
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(MONITORED_BUILDS))
def test_every_extauthz_process_is_scraped_exactly_once(name: str) -> None:
    expected = metrics_endpoints(name)
    assert expected
    # the layout it monitors has the same extauthz processes
    assert sorted(expected) == sorted(metrics_endpoints(MONITORED_BUILDS[name]))
    assert sorted(scraped(build(name))) == sorted(expected)
    for monitor in objects(name, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


@pytest.mark.parametrize("name", sorted(MONITORED_BUILDS))
def test_annotation_discovery_is_off_where_the_servicemonitor_scrapes(name: str) -> None:
    for deployment in {d["metadata"]["name"]: d for d, _ in extauthz_containers(name)}.values():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "false", deployment["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(MONITORED_BUILDS))
def test_every_layout_ships_the_alert_rules(name: str) -> None:
    (rule,) = objects(name, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_scrape_check_notices_a_missing_worker() -> None:
    objs = copy.deepcopy(build("prometheus-operator-multi-worker"))
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            obj["spec"]["endpoints"] = [e for e in obj["spec"]["endpoints"]
                                        if e["port"] != "metrics-1"]  # fmt: skip
    assert sorted(scraped(objs)) != sorted(metrics_endpoints("prometheus-operator-multi-worker"))
    # ...and the sidecar ServiceMonitor, unpatched, scrapes nothing in the shared layout
    shared = copy.deepcopy(build("prometheus-operator-shared"))
    for obj in shared:
        if obj["kind"] == "ServiceMonitor":
            obj["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "app"}
    assert scraped(shared) == []


def test_the_prometheusrule_is_generated_from_alerts_yaml() -> None:
    generator = runpy.run_path(str(REPO / "scripts" / "gen-prometheusrule"), run_name="gen")
    assert RULE_FILE.read_text() == generator["render"](), (
        "stale: run .venv/bin/python scripts/gen-prometheusrule"
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheusrule_rules(tmp_path: Path) -> None:
    rule = yaml.safe_load(RULE_FILE.read_text())
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout
