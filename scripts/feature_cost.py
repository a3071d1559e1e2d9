#!/usr/bin/env python3
"""Cost per check of the identity token and of tracing, on and off (in process, one run).

Runs ``Engine.check`` on one allowed API-key request (the cheapest authenticated check, so the
features' cost is not hidden behind an expensive one) in these setups, and prints the mean
microseconds per check of each:

    baseline            no identity token, tracing off (the tracing hook is one attribute read)
    hook-free           the same check through Engine._decide (no tracing hook at all)
    idtoken cached      identity token on, steady state: the cached token is reused
    idtoken ES256/EdDSA identity token on with the cache off: one signature per check
    tracing on          an OpenTelemetry span per check (SDK, batch processor, exporter that
                        drops everything: the SDK's cost without network)
    json log line       not per check: the cost of formatting one application log record

Usage: ``.venv/bin/python scripts/feature_cost.py [--checks N]`` (docs/identity-token.md and
docs/observability-otel.md quote one run).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauthz import tracing
from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import Decision, Outcome
from extauthz.idtoken.keys import generate_pem
from extauthz.keys import hash_api_key
from extauthz.logformat import make_formatter
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from extauthz.types import Headers, RequestView

KEY = "eak_feature-cost-key-0123456789abcd"
ROUNDS = 10


def _config(directory: Path, token: str) -> Path:
    path = directory / f"c-{abs(hash(token))}.yaml"
    path.write_text(f"""
settings:
{token or "  {}"}
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [orders:read]}}]
routes:
- {{name: orders, match: {{prefix: /v1/}}, authn: [keys]}}
""")
    return path


def _engine(path: Path) -> Engine:
    snapshot = compile_config(load_config(path), Metrics(),
                              registry={"api_key": ApiKeyAuthenticator.from_spec})
    return Engine(Metrics(), snapshot)


VIEW = RequestView(method="GET", host="api.example.com", path="/v1/orders",
                   headers=Headers({"x-api-key": KEY, "traceparent":
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))


def _otel_tracer() -> tracing.CheckTracer:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from extauthz.otel import OtelCheckTracer

    class _Drop(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # a queue large enough that no span is dropped (dropping would be cheaper than exporting)
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=200_000,
                                                   schedule_delay_millis=50))
    return OtelCheckTracer(provider)


Setup = tuple[str, Callable[[RequestView], Awaitable[Decision]], "tracing.CheckTracer | None"]


async def _run(checks: int) -> list[tuple[str, float]]:
    """Every setup runs once per round, rounds interleaved (a burst of load from another
    process then hits every setup alike); the best round of each is reported."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "es.pem").write_bytes(generate_pem("ES256"))
        (directory / "ed.pem").write_bytes(generate_pem("EdDSA"))
        template = ("  identity_token: {{issuer: https://x, all_routes: true, ttl_seconds: 300, "
                    "keys: [{{file: {key}}}]{extra}}}")
        base = _engine(_config(directory, ""))
        cached = _engine(_config(directory, template.format(key="es.pem", extra="")))
        es = _engine(_config(directory, template.format(key="es.pem",
                                                        extra=", cache_max_entries: 0")))
        ed = _engine(_config(directory, template.format(key="ed.pem",
                                                        extra=", cache_max_entries: 0")))
        otel = _otel_tracer()
        setups: list[Setup] = [
            ("baseline (token off, tracing off)", base.check, None),
            ("no tracing hook at all (Engine._decide)", lambda v: base._decide(v, None), None),
            ("idtoken on, cached (ES256)", cached.check, None),
            ("idtoken on, no cache (ES256: sign per check)", es.check, None),
            ("idtoken on, no cache (EdDSA: sign per check)", ed.check, None),
            ("tracing on (span per check)", base.check, otel),
            ("tracing on + idtoken cached", cached.check, otel),
        ]
        best = dict.fromkeys((name for name, _, _ in setups), float("inf"))
        per_round = max(1, checks // ROUNDS)
        for round_ in range(ROUNDS + 1):  # round 0 warms every cache and is not counted
            for name, call, tracer in setups:
                tracing.state.tracer = tracer
                started = time.perf_counter()
                for _ in range(per_round):
                    if (await call(VIEW)).outcome is not Outcome.ALLOW:
                        raise SystemExit(f"{name}: the measured check was not allowed")
                elapsed = (time.perf_counter() - started) / per_round * 1e6
                if round_:
                    best[name] = min(best[name], elapsed)
        tracing.state.tracer = None
        otel.shutdown()
    return list(best.items())


def _log_cost(records: int) -> list[tuple[str, float]]:
    out = []
    record = logging.LogRecord("extauthz.server", logging.INFO, __file__, 1,
                               "configuration reloaded (sha256 %s)", ("0123456789ab",), None)
    for fmt in ("text", "json"):
        formatter = make_formatter(fmt)
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(records // ROUNDS):
                formatter.format(record)
            best = min(best, (time.perf_counter() - started) / (records // ROUNDS) * 1e6)
        out.append((f"log record, {fmt} format (per record, not per check)", best))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    rows = asyncio.run(_run(args.checks)) + _log_cost(args.checks)
    width = max(len(name) for name, _ in rows)
    print(f"{'setup':<{width}}  us/check  ({args.checks} checks each, best of {ROUNDS} rounds)")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:8.2f}")


if __name__ == "__main__":
    main()
