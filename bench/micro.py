"""In-process cost of each stage of one check, without network or gRPC (``scripts/bench micro``).

For each scenario's CheckRequest (built as Envoy sends it) this times, in a loop, the stages the
servicer runs per Check, plus the whole ``AuthorizationServicer.Check`` coroutine::

    parse        CheckRequest.FromString(bytes)              (grpcio does this before Check)
    view         request.from_check_request
    engine       Engine.check(view)                          (route, authn, authz, Decision)
    response     respond.grpc.to_check_response(decision)
    serialize    CheckResponse.SerializeToString()          (grpcio does this after Check)
    metrics      checks_total.labels(...).inc() + check_duration.labels(...).observe()
    declog       DecisionLog.write (enqueue; the JSON line is built on its thread)
    declog-json  decisionlog.record + json.dumps             (that thread's work per line)
    Check        the servicer's Check coroutine, end to end (without parse/serialize)

Coroutines are driven with ``send(None)``: on these paths nothing awaits I/O, so a check completes
in one step (a suspension raises, it would mean the path did I/O). Subtracting the sum of these
from the server's measured CPU per check gives the cost of the gRPC stack and the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from bench import fixtures, grpcframe
from bench.runner import Scenario, first_line, scenarios


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends; raise if it does."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended (it did I/O)")


def _run(fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    return drive(fn(*args))


def _declog_json(record: Callable[..., dict[str, Any]], view: Any, decision: Any) -> str:
    return json.dumps(record(view, decision, 0.0002), separators=(",", ":"))


def timeit(fn: Callable[[], Any], iterations: int) -> float:
    """Median of 5 batches, microseconds per call."""
    batch = max(1, iterations // 5)
    results = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        results.append((time.perf_counter() - start) / batch * 1e6)
    results.sort()
    return results[2]


def message_for(sc: Scenario) -> Any:
    headers = {k: v for k, v in sc.headers.items() if k != "host"}
    if sc.rotate_header:
        headers[sc.rotate_header] = sc.rotate_prefix + (first_line(sc.rotate_file) or "")
    return grpcframe.check_request(method=sc.method, path=sc.path, headers=headers,
                                   body=sc.body, route=sc.route)


async def measure(work: Path, iterations: int, names: list[str] | None) -> list[dict[str, Any]]:
    from extauthz import decisionlog
    from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
    from extauthz.decisionlog import DecisionLog
    from extauthz.metrics import Metrics
    from extauthz.pipeline import Engine
    from extauthz.request import from_check_request
    from extauthz.respond.grpc import to_check_response
    from extauthz.servicer import AuthorizationServicer
    from extauthz.snapshot import load_snapshot

    fx = fixtures.build(work, new_tokens=50)
    metrics = Metrics()
    snapshot = load_snapshot(fx.config, metrics)
    await snapshot.start()
    engine = Engine(metrics, snapshot)
    sink = open("/dev/null", "w")  # noqa: SIM115 (closed below)
    dlog = DecisionLog(sink, sample_allowed=1.0, dropped=metrics.decision_log_dropped)
    servicer = AuthorizationServicer(engine, dlog)
    servicer_nolog = AuthorizationServicer(engine, None)
    rows = []
    try:
        for sc in scenarios(fx):
            if sc.route is None or (names and sc.name not in names):
                continue
            # jwt-*-new: the same token with the cache off is the same work as a new token
            message = message_for(sc)
            raw = message.SerializeToString()
            view = from_check_request(message)
            decision = drive(engine.check(view))
            response = to_check_response(decision)
            checks = metrics.checks
            duration = metrics.check_duration
            row: dict[str, Any] = {"scenario": sc.name, "outcome": decision.outcome.value,
                                   "http": decision.http_status}
            row["parse"] = timeit(partial(external_auth_pb2.CheckRequest.FromString, raw),
                                  iterations)
            row["view"] = timeit(partial(from_check_request, message), iterations)
            row["engine"] = timeit(partial(_run, engine.check, view), iterations)
            row["response"] = timeit(partial(to_check_response, decision), iterations)
            row["serialize"] = timeit(response.SerializeToString, iterations)
            labels = (decision.route, decision.outcome.value, decision.reason.value)

            def _metrics(labels: tuple[str, str, str] = labels, checks: Any = checks,
                         duration: Any = duration) -> None:
                checks.labels(*labels).inc()
                duration.labels(labels[0]).observe(0.0002)

            row["metrics"] = timeit(_metrics, iterations)
            row["declog-json"] = timeit(partial(_declog_json, decisionlog.record, view, decision),
                                        iterations)
            row["declog"] = timeit(partial(dlog.write, view, decision, 0.0002), iterations)
            row["Check"] = timeit(partial(_run, servicer.Check, message, None), iterations)
            row["Check-nolog"] = timeit(partial(_run, servicer_nolog.Check, message, None),
                                        iterations)
            row["total"] = row["parse"] + row["Check"] + row["serialize"]
            rows.append(row)
    finally:
        await snapshot.close()
        dlog.close()
        sink.close()
    return rows


COLUMNS = ("parse", "view", "engine", "response", "serialize", "metrics", "declog",
           "declog-json", "Check", "Check-nolog", "total")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in COLUMNS]
        lines.append(f"| {row['scenario']} ({row['http']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="extauthz-micro-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        if getattr(args, "transport", "grpc") == "http":
            from bench import hotloop

            return hotloop.run(work, args.iterations,
                               args.scenarios.split(",") if args.scenarios else None,
                               args.profile, args.event_loop)
        rows = asyncio.run(measure(work, args.iterations, None))
    print("microseconds per call (median of 5 batches); 'total' = parse + Check + serialize")
    print(table(rows))
    return 0
