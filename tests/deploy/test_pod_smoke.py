"""The rendered sidecar pod, run for real: the app, Envoy and extauthz containers' own commands,
configs and args from the kustomize output (ports moved to free ones on 127.0.0.1), and real
requests through Envoy. What a `kubectl apply` would do short of the container runtime."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import containers, envoy_binary, extauthz_command, flag, get
from .podsim import (
    Processes,
    free_port,
    http_get,
    processes,
    rewrite_args,
    rewrite_envoy,
    volume_files,
    wait_for,
    write_kubelet_volume,
)
from .test_extauthz_config import DEMO_KEY

#: the extauthz-run emptyDirs of the pods started by a test (removed after it)
_RUN_DIRS: list[str] = []


@pytest.fixture(autouse=True)
def _remove_run_dirs() -> Iterator[None]:
    yield
    while _RUN_DIRS:
        shutil.rmtree(_RUN_DIRS.pop(), ignore_errors=True)


def start_pod(name: str, tmp_path: Path, procs: Processes) -> dict[str, Any]:
    deployment = get(name, "Deployment", "app")
    spec = containers(deployment)
    envoy_cfg = yaml.safe_load(volume_files(name, deployment, "envoy-config")["envoy.yaml"])

    # Every port the pod uses, mapped to a free one.
    ports = {p: free_port() for p in (8080, 8081, 9901, 8000)}
    workers = [c for c in spec.values() if c.get("args", [])[:1] == ["serve"]]
    for worker in workers:
        for option in ("--grpc-address", "--http-address"):
            ports[int(flag(worker["args"], option).rpartition(":")[2])] = free_port()

    # app: its command, with its script from the app-echo volume.
    app = spec["app"]
    app_dir = write_kubelet_volume(tmp_path / "app", volume_files(name, deployment, "app-echo"))
    env = {e["name"]: e["value"] for e in app["env"]}
    env["ECHO_ADDRESS"] = f"127.0.0.1:{ports[int(env['ECHO_ADDRESS'].rpartition(':')[2])]}"
    script = app["command"][1].replace(app["volumeMounts"][0]["mountPath"], str(app_dir))
    procs.start("app", [sys.executable, script], env)

    # Envoy: its args, with the ConfigMap's config (listeners moved to loopback).
    envoy_dir = tmp_path / "envoy"
    envoy_dir.mkdir()
    (envoy_dir / "envoy.yaml").write_text(yaml.safe_dump(rewrite_envoy(envoy_cfg, ports)))
    args = rewrite_args(
        spec["envoy"]["args"], {"/etc/envoy/envoy.yaml": str(envoy_dir / "envoy.yaml")}, ports
    )
    procs.start("envoy", [envoy_binary(), *args, "--base-id", str(ports[8080])])

    # Envoy first, as can happen in a real pod: not ready while it sees no healthy extauthz.
    wait_for(f"http://127.0.0.1:{ports[8081]}/ready", procs, status=503)

    # extauthz workers: their args, with the mounted config directory.
    config_dir = write_kubelet_volume(
        tmp_path / "extauthz", volume_files(name, deployment, "extauthz-config")
    )
    for worker in workers:
        args = rewrite_args(
            worker["args"],
            {"/etc/extauthz/extauthz.yaml": str(config_dir / "extauthz.yaml")},
            ports,
        )
        # its env too (EXTAUTHZ_GRPC_SERVER=native: the built-in HTTP/2 server; a variant
        # that serves through the Envoy front gets its emptyDir for the private directory
        # laid out here)
        env = {e["name"]: e["value"] for e in worker.get("env", [])}
        if "EXTAUTHZ_GRPC_FRONT_RUNTIME_DIR" in env:
            # (a short path: a Unix socket path has at most 107 bytes, pytest's are long)
            run = tempfile.mkdtemp(prefix="pod-run-")
            _RUN_DIRS.append(run)
            env["EXTAUTHZ_GRPC_FRONT_RUNTIME_DIR"] = run
        procs.start(worker["name"], [*extauthz_command(), *args], env)

    base = f"http://127.0.0.1:{ports[8080]}"
    for worker in workers:
        http_port = ports[int(flag(worker["args"], "--http-address").rpartition(":")[2])]
        wait_for(f"http://127.0.0.1:{http_port}/readyz", procs)
    # Envoy turns ready within a few health-check intervals of extauthz...
    wait_for(f"http://127.0.0.1:{ports[8081]}/ready", procs, deadline=10)
    # ...and from then on checks go through: a Ready pod never answers "extauthz unavailable".
    status, body = http_get(f"{base}/public/ping")
    assert status == 200, (body, procs.describe())
    return {"base": base, "ports": ports, "workers": workers}


def wait_all_extauthz_endpoints_healthy(pod: dict[str, Any], deadline: float = 10) -> str:
    """Envoy's own view (admin /clusters): every extauthz endpoint passed its gRPC health check."""
    admin = f"http://127.0.0.1:{pod['ports'][9901]}/clusters"
    end = time.monotonic() + deadline
    text = ""
    while time.monotonic() < end:
        text = http_get(admin)[1].decode()
        flags = re.findall(r"^extauthz::[0-9.:]+::health_flags::(\S+)$", text, re.MULTILINE)
        if flags and set(flags) == {"healthy"} and len(flags) == len(pod["workers"]):
            return text
        time.sleep(0.1)
    raise AssertionError(f"extauthz endpoints not all healthy:\n{text}")


def raw_get(port: int, path: str) -> int:
    """A request whose path is sent byte for byte (urllib would not send every path as is)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)


def test_sidecar_pod_serves_through_envoy_and_fails_closed(tmp_path: Path) -> None:
    with processes(tmp_path) as procs:
        pod = start_pod("base", tmp_path, procs)
        base, ports = pod["base"], pod["ports"]

        # public route: allowed, and a spoofed identity header never reaches the app
        status, body = http_get(f"{base}/public/hello", {"x-auth-subject": "admin"})
        assert status == 200, body
        seen = echoed(body)
        assert seen["path"] == "/public/hello"
        assert "x-auth-subject" not in seen["headers"]

        # protected route: 401 with a challenge without a key, 200 with the demo key
        status, body = http_get(f"{base}/api/orders")
        assert status == 401, body
        assert json.loads(body)["reason"] == "missing_credential"
        status, body = http_get(f"{base}/api/orders", {"x-api-key": DEMO_KEY})
        assert status == 200, body
        headers = echoed(body)["headers"]
        assert headers["x-auth-consumer"] == "demo-client"
        assert "x-api-key" not in headers, "the credential must be stripped"
        status, _ = http_get(f"{base}/api/orders", {"x-api-key": DEMO_KEY + "x"})
        assert status == 401

        # no route: 403
        status, body = http_get(f"{base}/elsewhere")
        assert status == 403, body

        # path normalization happens in Envoy, before the check
        assert raw_get(ports[8080], "/api/%2F..%2Fpublic/x") == 400  # REJECT_REQUEST
        assert raw_get(ports[8080], "/public/../api/orders") == 401  # normalized to /api/orders

        # Envoy sees extauthz as healthy through the gRPC health protocol
        text = wait_all_extauthz_endpoints_healthy(pod)
        assert f"extauthz::127.0.0.1:{ports[9001]}::health_flags::healthy" in text

        # extauthz counted the decisions by route
        _, metrics = http_get(f"http://127.0.0.1:{ports[9090]}/metrics")
        assert 'extauthz_checks_total{outcome="allow",reason="ok",route="api"}' in metrics.decode()

        # extauthz gone: fail closed, with status_on_error 503 rather than a pass or a 403
        assert procs.stop("extauthz") == 0, procs.describe()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            status, _ = http_get(f"{base}/public/hello")
            if status == 503:
                break
            time.sleep(0.2)
        assert status == 503, procs.describe()


def worker_checks(pod: dict[str, Any]) -> list[float]:
    """Allowed checks on route `api` counted by each worker's own /metrics."""
    counts = []
    for worker in pod["workers"]:
        http_port = pod["ports"][int(flag(worker["args"], "--http-address").rpartition(":")[2])]
        _, metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")
        match = re.search(
            r'extauthz_checks_total\{outcome="allow",reason="ok",route="api"\} (\S+)',
            metrics.decode(),
        )
        counts.append(float(match.group(1)) if match else 0.0)
    return counts


def test_multi_worker_pod_spreads_checks_over_every_worker(tmp_path: Path) -> None:
    with processes(tmp_path) as procs:
        pod = start_pod("multi-worker", tmp_path, procs)
        base = pod["base"]
        wait_all_extauthz_endpoints_healthy(pod)
        # Health changes reach Envoy's worker threads a moment after the admin page shows them,
        # so keep sending (bounded) until every worker has been picked.
        sent, counts = 0, [0.0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sent < 400:
            for _ in range(20):
                status, _ = http_get(f"{base}/api/orders", {"x-api-key": DEMO_KEY})
                assert status == 200
                sent += 1
            counts = worker_checks(pod)
            if all(n > 0 for n in counts):
                break
            time.sleep(0.2)
        assert sum(counts) == sent
        assert all(n > 0 for n in counts), f"a worker got no checks: {counts}"

        # then the load is shared, not pinned: the next 40 checks go to more than one worker
        before = worker_checks(pod)
        for _ in range(40):
            assert http_get(f"{base}/api/orders", {"x-api-key": DEMO_KEY})[0] == 200
        after = worker_checks(pod)
        assert sum(1 for b, a in zip(before, after, strict=True) if a > b) == len(after), (
            before,
            after,
        )

        # one worker goes away: checks headed for it are retried on the other worker
        # (retry_policy with previous_hosts) until its health check ejects it. Without the
        # retries about half of these fail; with them a failure needs the retry to land on the
        # dead worker again after 5 re-picks, twice (p ~ 1/2000 per request).
        assert procs.stop(pod["workers"][1]["name"]) == 0
        statuses = [http_get(f"{base}/api/orders", {"x-api-key": DEMO_KEY})[0] for _ in range(60)]
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) <= 2, statuses
