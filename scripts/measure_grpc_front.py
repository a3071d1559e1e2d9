#!/usr/bin/env python3
"""CPU per check and added latency of the gRPC Check API: grpc.aio vs the Envoy front.

Usage::

    .venv/bin/python scripts/measure_grpc_front.py [--rounds 3] [--seconds 5] [--out FILE.json]

Setup (the real engine, the shipped proxy configuration): one demo IdP, ``policies/`` rendered
for it, and two stacks side by side, each ``wrk -> proxy Envoy (deploy/envoy/envoy.yaml, one
worker) -> extauthz``: ``grpc`` (``serve --grpc-server grpcio``) and ``grpc-envoy`` (``serve
--grpc-server envoy``: the supervised Envoy + extauthz). The proxy's ``/profile/`` route (JWT
RS256, the ``profile`` extauthz route) and ``/static/`` route (ext_authz off: "Envoy alone")
answer with ``direct_response`` so no upstream costs CPU. One token, so the JWT cache is warm.

Per round, interleaved (grpc, grpc-envoy, then the other order in the next round), with the
same duration each:

* 10 connections: checks per second; CPU seconds per check of the processes serving the check
  (grpc: extauthz; grpc-envoy: extauthz + its Envoy child) and of the whole pod (+ the proxy
  Envoy);
* 1 connection: p50 latency, minus the p50 of ``/static/`` on the same proxy (Envoy alone):
  the added p50;
* direct: ``h2load`` straight to the gRPC port (one connection, 10 streams, as the proxy's
  Envoy calls), the same CheckRequest each time: CPU per check of the serving processes alone,
  without the proxy's Envoy in the measurement.

The result is the median over the rounds of each figure, and the ratios envoy-front / grpc.
The machine may be shared: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.grpcframe import CHECK_PATH, check_request, write_frame  # noqa: E402
from bench.loadgen import run_h2load, run_wrk, wrk_script  # noqa: E402
from bench.procstat import cpu_seconds  # noqa: E402
from extauthz.demo.echo import start_echo  # noqa: E402
from extauthz.demo.idp import DemoIdP  # noqa: E402
from tests.support.processes import Stack, render_policies  # noqa: E402
from tests.support.transports import start_transport_stack  # noqa: E402

TRANSPORTS = ("grpc", "grpc-envoy")


def _direct_responses(config: dict[str, Any]) -> None:
    """/profile/ and /static/ answer 200 from the proxy itself (no upstream CPU)."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
        if route["match"].get("prefix") in ("/profile/", "/static/"):
            route.pop("route", None)
            route["direct_response"] = {"status": 200}
    # no access log line per request: it would cost the proxy CPU in both stacks alike
    hcm["typed_config"].pop("access_log", None)


def children(pid: int) -> list[int]:
    """Direct child PIDs of ``pid`` (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


def serving_pids(stack: Stack) -> list[int]:
    """extauthz and (Envoy front) its Envoy child."""
    assert stack.extauthz.pid is not None
    return [stack.extauthz.pid, *children(stack.extauthz.pid)]


def measure(stack: Stack, script: Path, static: Path, seconds: float,
            frame: Path) -> dict[str, float]:
    """One 10-connection and two 1-connection runs through the proxy, one direct h2load run."""
    serving = serving_pids(stack)
    assert stack.envoy.pid is not None
    pod = [*serving, stack.envoy.pid]
    before = {p: cpu_seconds(p) for p in pod}
    loaded = run_wrk("wrk", stack.base_url + "/profile/me", script, connections=10,
                     duration_s=seconds, threads=2)
    used = {p: cpu_seconds(p) - before[p] for p in pod}
    assert loaded.non_2xx == 0 and loaded.requests > 0, loaded
    one = run_wrk("wrk", stack.base_url + "/profile/me", script, connections=1,
                  duration_s=seconds / 2, threads=1)
    alone = run_wrk("wrk", stack.base_url + "/static/x", static, connections=1,
                    duration_s=seconds / 2, threads=1)
    checks = loaded.requests
    before_direct = {p: cpu_seconds(p) for p in serving}
    direct = run_h2load("h2load", f"http://127.0.0.1:{stack.ports.extauthz}{CHECK_PATH}", frame,
                        streams=10, duration_s=seconds, warmup_s=0.5,
                        log_file=frame.with_suffix(".log"))
    direct_cpu = sum(cpu_seconds(p) - before_direct[p] for p in serving)
    return {
        "direct_rps": direct.rps,
        "direct_us_per_check": direct_cpu / max(1, direct.requests) * 1e6,
        "rps_10": loaded.rps,
        "serving_us_per_check": sum(used[p] for p in serving) / checks * 1e6,
        "extauthz_us_per_check": used[serving[0]] / checks * 1e6,
        "pod_us_per_check": sum(used.values()) / checks * 1e6,
        "p50_1_us": one.latency_us["p50"],
        "alone_p50_1_us": alone.latency_us["p50"],
        "added_p50_us": one.latency_us["p50"] - alone.latency_us["p50"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="measure-grpc-front-"))
    stacks: dict[str, Stack] = {}
    echo = start_echo()
    try:
        with DemoIdP() as idp:
            config = render_policies(work / "policies", issuer=idp.issuer)
            for transport in TRANSPORTS:
                stacks[transport] = start_transport_stack(
                    transport, config, upstream_port=echo.port, log_dir=work / transport,
                    envoy_edit=_direct_responses)
            token = idp.mint("alice", expires_in=3600)
            script = work / "jwt.lua"
            script.write_text(wrk_script(method="GET", path="/profile/me",
                                         headers={"authorization": f"Bearer {token}"}))
            frame = write_frame(work / "check.bin", check_request(
                method="GET", path="/profile/me", host="localhost",
                headers={"authorization": f"Bearer {token}"}, route="profile"))
            static = work / "static.lua"
            static.write_text(wrk_script(method="GET", path="/static/x", headers={}))
            for stack in stacks.values():  # warm: JWKS fetched, token cached, connections up
                run_wrk("wrk", stack.base_url + "/profile/me", script, connections=10,
                        duration_s=1)
            rows: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
            for index in range(args.rounds):
                order = TRANSPORTS if index % 2 == 0 else TRANSPORTS[::-1]
                for transport in order:
                    rows[transport].append(measure(stacks[transport], script, static,
                                                   args.seconds, frame))
                    time.sleep(0.5)
    finally:
        for stack in stacks.values():
            stack.stop()
        echo.close()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        t: {k: statistics.median(r[k] for r in rows[t]) for k in rows[t][0]} for t in TRANSPORTS}
    base, front = result["grpc"], result["grpc-envoy"]
    result["ratios"] = {
        "serving_cpu_per_check": front["serving_us_per_check"] / base["serving_us_per_check"],
        "pod_cpu_per_check": front["pod_us_per_check"] / base["pod_us_per_check"],
        "rps_10": front["rps_10"] / base["rps_10"],
        "direct_cpu_per_check": front["direct_us_per_check"] / base["direct_us_per_check"],
    }
    result["rounds"] = rows
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
