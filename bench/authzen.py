"""Cost of an AuthZEN rule per check, in process: ``python -m bench.authzen`` (one run).

Three routes that differ only in their policy, checked with ``Engine.check`` (route, API key,
policy, Decision — no gRPC, no Envoy) on one event loop:

    base      API key + path template, no PDP
    cached    the same + an ``authzen`` rule whose answer is cached (every check a cache hit)
    uncached  the same + an ``authzen`` rule with ``cache_ttl_seconds: 0`` (every check a POST to
              a real Cerbos on 127.0.0.1, started here from ``.venv/cerbos``)

Prints microseconds per check and the ratio of each to ``base``. The machine is shared: read the
figures as orders of magnitude, not as a benchmark result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from extauthz.config.loader import load_config
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from tests.support.builders import make_view
from tests.support.cerbos import CerbosServer

KEY = "eak_bench-authzen-key-000000000000"
POLICIES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "authzen" / "cerbos"


def config(cerbos_url: str) -> str:
    rule = """
    rules:
    - authzen:
        pdp: {pdp}
        subject: {{type: user, id: "{{{{ identity.consumer }}}}",
                   properties: {{roles: "{{{{ identity.scopes }}}}"}}}}
        action: {{name: read}}
        resource: {{type: document, id: "{{{{ params.doc }}}}", properties: {{owner: alice}}}}
"""
    return f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [user]}}]
settings:
  pdps:
    cached: {{url: "{cerbos_url}", cache_ttl_seconds: 3600}}
    uncached: {{url: "{cerbos_url}", cache_ttl_seconds: 0}}
routes:
- name: base
  match: {{template: "/base/{{doc}}"}}
  authn: [keys]
- name: cached
  match: {{template: "/cached/{{doc}}"}}
  authn: [keys]
  authz:{rule.format(pdp="cached")}
- name: uncached
  match: {{template: "/uncached/{{doc}}"}}
  authn: [keys]
  authz:{rule.format(pdp="uncached")}
"""


async def measure(engine: Engine, path: str, count: int) -> float:
    """Median of 5 batches, microseconds per check (every check must be allowed)."""
    view = make_view(path, headers={"x-api-key": KEY})
    for _ in range(min(count, 50)):  # warm up (and fill the cache)
        decision = await engine.check(view)
        if decision.http_status != 200:
            raise RuntimeError(f"{path}: {decision.http_status} {decision.reason}")
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count // 5):
            await engine.check(view)
        batches.append((time.perf_counter() - start) / (count // 5) * 1e6)
    return statistics.median(batches)


async def run(checks: int, uncached_checks: int, work: Path) -> dict[str, float]:
    policies = work / "policies"
    shutil.copytree(POLICIES, policies)
    cerbos = CerbosServer(policies, work / "cerbos").start()
    try:
        path = work / "c.yaml"
        path.write_text(config(cerbos.url))
        snapshot = compile_config(load_config(path), Metrics())
        engine = Engine(Metrics(), snapshot)
        try:
            base = await measure(engine, "/base/d1", checks)
            cached = await measure(engine, "/cached/d1", checks)
            uncached = await measure(engine, "/uncached/d1", uncached_checks)
        finally:
            await snapshot.close()
    finally:
        cerbos.stop()
    return {"base_us": base, "cached_us": cached, "uncached_us": uncached,
            "cached_ratio": cached / base, "uncached_ratio": uncached / base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--uncached-checks", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = asyncio.run(run(args.checks, args.uncached_checks, Path(work)))
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
