"""Server models compared on the same decisions (``scripts/bench servers``). Experimental.

Each model serves ``envoy.service.auth.v3.Authorization/Check`` on 127.0.0.1 with extauthz's own
:class:`~extauthz.servicer.AuthorizationServicer` over the benchmark configuration (so the
decisions, metrics and decision log are the real ones), in its own process:

``aio``          grpc.aio on the default asyncio loop (what ``extauthz serve`` runs)
``aio-uvloop``   grpc.aio on a uvloop loop
``sync-N``       grpc's thread-pool server with N threads; each Check drives the servicer's
                 coroutine to completion in the handler thread (these paths never await I/O;
                 a path that would suspend is handed to a background event loop instead)
``noop-aio``     grpc.aio answering a constant CheckResponse: the floor of the gRPC stack
``noop-sync-N``  the same on the thread-pool server

Caveat for ``sync-N``: extauthz's caches are written for one event loop; the experiment shares
them across threads (fine for measuring, not for production without a lock).

The driver measures each model with h2load (direct, 1 HTTP/2 connection, N streams) on the API
key and warm-JWT requests, and end to end through Envoy (wrk, 10 connections, JWT warm) next to
Envoy alone, all in one run. Results: ``servers.md`` / ``servers.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- serving


def _engine(config: str, decision_log: bool) -> tuple[Any, Any]:
    from extauthz.decisionlog import DecisionLog
    from extauthz.metrics import Metrics
    from extauthz.pipeline import Engine
    from extauthz.servicer import AuthorizationServicer
    from extauthz.snapshot import load_snapshot

    metrics = Metrics()
    snapshot = load_snapshot(config, metrics)
    engine = Engine(metrics, snapshot)
    dlog = None
    if decision_log:
        dlog = DecisionLog(open(os.devnull, "w"),  # noqa: SIM115 (lives as long as the process)
                           dropped=metrics.decision_log_dropped)
    return snapshot, AuthorizationServicer(engine, dlog)


def _noop_response() -> Any:
    from extauthz.decision import Decision, GrpcCode, Outcome
    from extauthz.errors import Reason
    from extauthz.respond.grpc import to_check_response

    return to_check_response(Decision(outcome=Outcome.ALLOW, http_status=200,
                                      grpc_code=GrpcCode.OK, reason=Reason.OK, route="noop"))


async def serve_aio(port: int, config: str, noop: bool, decision_log: bool) -> None:
    import grpc

    from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    if noop:
        response = _noop_response()

        class Noop(external_auth_pb2_grpc.AuthorizationServicer):
            async def Check(self, request: Any, context: Any) -> Any:
                return response

        servicer: Any = Noop()
    else:
        snapshot, servicer = _engine(config, decision_log)
        await snapshot.start()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def serve_sync(port: int, config: str, threads: int, noop: bool, decision_log: bool) -> None:
    import grpc

    from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="bg-loop", daemon=True).start()

    if noop:
        response = _noop_response()

        class NoopSync(external_auth_pb2_grpc.AuthorizationServicer):
            def Check(self, request: Any, context: Any) -> Any:
                return response

        handler: Any = NoopSync()
    else:
        snapshot, inner = _engine(config, decision_log)
        asyncio.run_coroutine_threadsafe(snapshot.start(), loop).result(30)

        class SyncServicer(external_auth_pb2_grpc.AuthorizationServicer):
            def Check(self, request: Any, context: Any) -> Any:
                coro = inner.Check(request, context)
                try:
                    coro.send(None)
                except StopIteration as done:
                    return done.value
                # it awaited I/O (a JWKS refetch...): start over on the background loop
                coro.close()
                return asyncio.run_coroutine_threadsafe(inner.Check(request, context),
                                                        loop).result(10)

        handler = SyncServicer()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(handler, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers")
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--no-decision-log", action="store_true")
    a = p.parse_args(argv)
    model, dlog = a.model, not a.no_decision_log
    noop = model.startswith("noop-")
    base = model.removeprefix("noop-")
    if base == "aio":
        asyncio.run(serve_aio(a.port, a.config, noop, dlog))
    elif base == "aio-uvloop":
        import uvloop

        uvloop.run(serve_aio(a.port, a.config, noop, dlog))
    elif base.startswith("sync-"):
        serve_sync(a.port, a.config, int(base.split("-", 1)[1]), noop, dlog)
    else:
        raise SystemExit(f"unknown model {model!r}")
    return 0


# -------------------------------------------------------------------------------------- driver


def main(args: argparse.Namespace) -> int:
    from bench import envoyconf, fixtures, grpcframe, report, runner, tools
    from bench.micro import message_for
    from bench.runner import output_dir
    from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_ports, http_ok, tcp_open

    out = output_dir(args.out, "servers-")
    work = out / "work"
    found = tools.locate()
    if not (found.wrk and found.h2load and found.envoy):
        print("bench: " + found.missing_message(), file=sys.stderr)
        return 3
    fx = fixtures.build(work, new_tokens=10)
    by_name = {s.name: s for s in runner.scenarios(fx)}
    direct = [by_name["apikey"], by_name["jwt-rs256-warm"]]
    frames = {s.name: grpcframe.write_frame(work / f"check-{s.name}.bin", message_for(s))
              for s in direct}
    concs = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",")
    rows: list[dict[str, Any]] = []
    listener, admin, port = free_ports(3)
    (work / "envoy.yaml").write_text(envoyconf.render(
        listener_port=listener, admin_port=admin, extauthz_ports=[port]))
    envoy = ManagedProcess("envoy", [found.envoy, "-c", str(work / "envoy.yaml"),
                                     "--log-level", "warning", "--concurrency", "1",
                                     "--disable-hot-restart"], work / "envoy.log").start()
    opts = runner.Options.for_mode("quick", out, duration_s=args.duration, warmup_s=1.0,
                                   direct_duration_s=args.duration)
    try:
        envoy.wait_ready(http_ok(f"http://{LOOPBACK}:{admin}/ready"), 30)

        # what runner.measure_* need of a stack
        stack: Any = SimpleNamespace(grpc_ports=[port], extauthz_pids=[], envoy=envoy,
                                     url=partial(runner.loopback_url, listener))
        envoy_rows = [runner.measure_wrk(stack, found, by_name["envoy"], 10, opts)]
        print(f"envoy alone: {envoy_rows[0]['rps']:.0f} req/s", flush=True)
        for model in models:
            proc = ManagedProcess(
                f"server-{model}",
                [sys.executable, "-m", "bench.servers", "--model", model, "--port", str(port),
                 "--config", str(fx.config)], work / f"server-{model}.log", cwd=REPO).start()
            try:
                proc.wait_ready(lambda: tcp_open(LOOPBACK, port), 60)
                time.sleep(0.3)
                assert proc.pid is not None
                stack.extauthz_pids = [proc.pid]
                for sc in direct:
                    if model.startswith("noop") and sc.name != "apikey":
                        continue
                    for streams in concs:
                        row = runner.measure_direct(stack, found, sc, streams, frames[sc.name],
                                                    opts)
                        row.update(model=model, path="direct")
                        rows.append(row)
                        print(f"{model:<14} {sc.name:<15} m={streams:<3} {row['rps']:>7.0f} "
                              f"req/s p50 {row['latency_ms']['p50']:.3f} ms cpu "
                              f"{row['extauthz_cpu_us_per_check']:.0f} us", flush=True)
                sc = by_name["apikey" if model.startswith("noop") else "jwt-rs256-warm"]
                row = runner.measure_wrk(stack, found, sc, 10, opts)
                row.update(model=model, path="envoy")
                rows.append(row)
                print(f"{model:<14} {sc.name:<15} via Envoy c=10 {row['rps']:>7.0f} req/s "
                      f"cpu {row['extauthz_cpu_us_per_check']:.0f} us "
                      f"bad {row['unexpected_responses']}", flush=True)
            finally:
                proc.stop()
                stack.extauthz_pids = []
        envoy_rows.append(runner.measure_wrk(stack, found, by_name["envoy"], 10, opts))
    finally:
        envoy.stop()
    base = sum(r["rps"] for r in envoy_rows) / len(envoy_rows)
    for row in rows:
        if row["path"] == "envoy":
            row["rps_ratio"] = round(row["rps"] / base, 3)
    doc = {"environment": runner.environment(found, opts), "envoy_alone_rps": envoy_rows,
           "rows": rows, "rss_note": "RSS of the model's process after its runs"}
    (out / "servers.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"Envoy alone (10 connections): {base:.0f} req/s "
             f"({', '.join(str(r['rps']) for r in envoy_rows)})", "",
             "| model | scenario | path | conc | req/s | x Envoy | p50 ms | p99 ms "
             "| CPU us/check | cores |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['scenario']} | {r['path']} | {r['concurrency']} "
            f"| {r['rps']:.0f} | {report._f(r.get('rps_ratio'))} "
            f"| {r['latency_ms'].get('p50', 0):.3f} | {r['latency_ms'].get('p99', 0):.3f} "
            f"| {r['extauthz_cpu_us_per_check']:.0f} | {r['extauthz_cpu_cores']:.2f} |")
    text = "\n".join(lines) + "\n"
    (out / "servers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
