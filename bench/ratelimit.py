"""Cost of rate limiting per check, in one run: ``python -m bench.ratelimit`` (under a minute).

The same API-key check (CheckRequest -> RequestView -> Engine.check -> CheckResponse, in process,
no gRPC) under six configurations that differ only in ``limits``: none; one limit and three
limits in memory; one and three in Redis (a Debian ``redis-server`` on a free 127.0.0.1 port,
started and stopped here). The limits are far above the load (nothing is denied). Checks run one
after another on one event loop; for each configuration it reports the wall time and the CPU
time of this process per check (the median of 5 batches) and both as ratios to "none". With Redis,
wall time includes the round trip to Redis (three limits: three scripts sent concurrently), and
CPU time is this process's share only (Redis's own work is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from extauthz.checktool import build_check_request
from extauthz.config.loader import load_config
from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_port, tcp_open
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.request import from_check_request
from extauthz.respond.grpc import to_check_response
from extauthz.snapshot import Snapshot, compile_config

KEY = "eak_bench-ratelimit-key-0123456789"
BASE = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
consumers:
- name: acme
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
"""
LIMITS = """
rate_limiting:
  {redis}
  limits:
    a: {{key: consumer, store: {store}, windows: [{{requests: 1000000000, seconds: 1}}]}}
    b: {{key: [consumer, route], store: {store}, windows: [{{requests: 1000000000, seconds: 1}},
        {{requests: 1000000000, seconds: 86400}}]}}
    c: {{key: api_key, store: {store}, windows: [{{requests: 1000000000, seconds: 60}}]}}
"""
ROUTE = """
routes:
- name: api
  match: {{prefix: /v1/}}
  authn: [keys]
  limits: {limits}
"""
CASES = {
    "none": ("memory", []),
    "memory-1": ("memory", ["a"]),
    "memory-3": ("memory", ["a", "b", "c"]),
    "redis-1": ("redis", ["a"]),
    "redis-3": ("redis", ["a", "b", "c"]),
}


def _config(directory: Path, store: str, limits: list[str], redis_url: str) -> Path:
    redis = f"redis: {{url: '{redis_url}', timeout_seconds: 0.5}}" if store == "redis" else ""
    text = BASE + LIMITS.format(redis=redis, store=store) + ROUTE.format(limits=limits)
    path = directory / f"{store}-{len(limits)}.yaml"
    path.write_text(text)
    return path


async def _measure(snapshot: Snapshot, iterations: int) -> tuple[float, float]:
    """(wall us, cpu us) per check: medians of 5 batches."""
    engine = Engine(Metrics(), snapshot)
    raw = build_check_request({"path": "/v1/orders", "headers": {"x-api-key": KEY}})

    async def one() -> None:
        decision = await engine.check(from_check_request(raw))
        if not decision.allowed:
            raise RuntimeError(f"bench check denied: {decision.reason}")
        to_check_response(decision)

    for _ in range(min(200, iterations)):  # warm: key cache, Redis connections, script load
        await one()
    walls, cpus = [], []
    batch = max(1, iterations // 5)
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batch):
            await one()
        walls.append((time.perf_counter() - wall) / batch * 1e6)
        cpus.append((time.process_time() - cpu) / batch * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def _start_redis(directory: Path) -> tuple[ManagedProcess, str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (scripts/bootstrap installs it)")
    port = free_port()
    argv = [server, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning"]
    proc = ManagedProcess("redis", argv, directory / "redis.log").start()
    proc.wait_ready(lambda: tcp_open(LOOPBACK, port), timeout=10)
    return proc, f"redis://{LOOPBACK}:{port}/0"


def run(iterations: int, redis_iterations: int, out: Callable[[str], None] = print) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        directory = Path(tmp)
        redis, url = _start_redis(directory)
        try:
            results: dict[str, tuple[float, float]] = {}
            for name, (store, limits) in CASES.items():
                snapshot = compile_config(load_config(_config(directory, store, limits, url)),
                                          Metrics())

                async def measure(s: Snapshot = snapshot, n: int = (
                        redis_iterations if store == "redis" else iterations)) -> tuple[
                        float, float]:
                    await s.start()
                    try:
                        return await _measure(s, n)
                    finally:
                        await s.close()

                results[name] = asyncio.run(measure())
        finally:
            redis.stop()
    wall0, cpu0 = results["none"]
    out("configuration   wall us/check  ratio   cpu us/check  ratio")
    for name, (wall, cpu) in results.items():
        out(f"{name:<14} {wall:>13.1f} {wall / wall0:>6.2f} {cpu:>14.1f} {cpu / cpu0:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="memory cases")
    parser.add_argument("--redis-iterations", type=int, default=4_000, help="Redis cases")
    args = parser.parse_args()
    run(args.iterations, args.redis_iterations)


if __name__ == "__main__":
    main()
