"""``python -m bench`` — see ``scripts/bench --help`` and docs/performance.md.

Subcommands (``run`` is the default)::

    run      [--quick | --smoke] [--out DIR] [--workers N] [--scenarios a,b] [--no-sweep] ...
    micro    in-process cost of each stage of one check (no network)
    servers  grpc.aio vs grpc.aio+uvloop vs sync grpc + threads, same decisions
    profile  py-spy of extauthz under load for the JWT-warm and API-key paths
    http     experiment: Envoy's HTTP ext_authz protocol on a lean asyncio/uvloop server

Exit codes: 0 done; 2 usage; 3 a required tool is missing (the message says which and how to get
it); 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import report, runner, tools

REPO = Path(__file__).resolve().parents[1]
EXIT_MISSING_TOOL = 3


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _sweep_points(text: str) -> dict[str, list[int]]:
    """``routes=1,1000;api_keys=10,100000`` -> {"routes": [1, 1000], "api_keys": [10, 100000]}."""
    points: dict[str, list[int]] = {}
    for part in text.split(";"):
        if part.strip():
            dim, _, values = part.partition("=")
            points[dim.strip()] = _ints(values)
    return points


def _run(args: argparse.Namespace) -> int:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = runner.output_dir(args.out, "")
    found = tools.locate(install=args.install_tools)
    if found.wrk is None or found.envoy is None or (found.h2load is None and not args.no_direct):
        print("bench: " + found.missing_message(), file=sys.stderr)
        if found.wrk is None or found.envoy is None:
            return EXIT_MISSING_TOOL
        print("bench: continuing without the direct gRPC measurements", file=sys.stderr)
    opts = runner.Options.for_mode(
        mode, out,
        concurrency=_ints(args.concurrency) if args.concurrency else None,
        duration_s=args.duration, scenarios=args.scenarios.split(",") if args.scenarios else None,
        workers=args.workers, envoy_concurrency=args.envoy_concurrency,
        direct=False if args.no_direct else None, sweep=False if args.no_sweep else None,
        extauthz_args=args.extauthz_arg or None,
        sweep_points=_sweep_points(args.sweep_points) if args.sweep_points else None,
        transports=args.transports.split(",") if args.transports else None,
        api_keys_memory=0 if args.no_api_keys_memory else None,
    )
    print(f"bench: {mode} run -> {out}", flush=True)
    doc = runner.run(found, opts)
    doc["targets"] = report.targets(doc)
    why = report.plot(doc, out / "latency.png") if not args.no_plot else "--no-plot"
    doc["plot"] = "latency.png" if why is None else None
    if why:
        doc["notes"].append(f"plot: {why}")
    runner.write_json(out / "results.json", doc)
    text = report.markdown(doc)
    (out / "results.md").write_text(text)
    print()
    print(text)
    print(f"bench: wrote {out / 'results.md'}, {out / 'results.json'}"
          + (f", {out / 'latency.png'}" if why is None else f" (no plot: {why})"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    def run_args(p: argparse.ArgumentParser) -> None:
        speed = p.add_mutually_exclusive_group()
        speed.add_argument("--quick", action="store_true",
                           help="shorter runs and a smaller sweep (~8 min)")
        speed.add_argument("--smoke", action="store_true",
                           help="seconds: one scenario, one concurrency, no sweep (CI)")
        p.add_argument("--out", help="output directory (default .bench/<timestamp>)")
        p.add_argument("--concurrency", help="comma-separated, default 1,10,50")
        p.add_argument("--duration", type=float, help="seconds per measured point")
        p.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
        p.add_argument("--workers", type=int, default=1,
                       help="extauthz processes, one gRPC endpoint each (default 1)")
        p.add_argument("--envoy-concurrency", type=int, default=1,
                       help="Envoy worker threads (default 1)")
        p.add_argument("--no-direct", action="store_true", help="skip the h2load gRPC runs")
        p.add_argument("--no-sweep", action="store_true", help="skip the scaling sweep")
        p.add_argument("--transports", metavar="grpc,grpc-envoy,http",
                       help="Envoy -> extauthz transports to measure end to end (default: all "
                            "three): grpc.aio, the Envoy-fronted gRPC server (serve --grpc-server "
                            "envoy; its Envoy counted as extauthz), Envoy's HTTP ext_authz")
        p.add_argument("--sweep-points", metavar="DIM=N,..;..",
                       help="sweep only these points, e.g. 'api_keys=10,100000;routes=1,1000' "
                            "(dimensions: routes, api_keys, issuers, cached_tokens)")
        p.add_argument("--no-plot", action="store_true")
        p.add_argument("--no-api-keys-memory", action="store_true",
                       help="skip scripts/measure_apikeys.py (100 000 API keys: load time, RSS)")
        p.add_argument("--extauthz-arg", action="append", metavar="ARG",
                       help="extra argument for `extauthz serve` (repeatable), e.g. "
                            "--extauthz-arg=--no-decision-log")
        p.add_argument("--install-tools", action="store_true",
                       help="apt-get install wrk / nghttp2-client when missing (root only)")

    run_args(parser)
    run_p = sub.add_parser("run", help="the benchmark (default)")
    run_args(run_p)
    run_p.set_defaults(func=_run)

    micro = sub.add_parser("micro", help="per-stage cost of one check, in process")
    micro.add_argument("--iterations", type=int, default=20000)
    micro.add_argument("--out", help="directory for fixtures (default: a temporary one)")
    micro.add_argument("--transport", choices=("grpc", "http"), default="grpc",
                       help="grpc: the stages of the servicer's Check; http: the HTTP "
                            "transport's whole path (data_received -> answer) in process")
    micro.add_argument("--scenarios", help="comma-separated (--transport http)")
    micro.add_argument("--profile", action="store_true",
                       help="--transport http: also print a cProfile of the loop")
    micro.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                       help="--transport http: the loop, as `extauthz serve --event-loop`")
    micro.set_defaults(func=lambda a: __import__("bench.micro").micro.main(a))

    servers = sub.add_parser("servers", help="server models compared on the same decisions")
    servers.add_argument("--out", help="output directory (default .bench/servers-<timestamp>)")
    servers.add_argument("--duration", type=float, default=5.0)
    servers.add_argument("--models", default="aio,aio-uvloop,sync-4,sync-8")
    servers.add_argument("--concurrency", default="1,10,50")
    servers.set_defaults(func=lambda a: __import__("bench.servers").servers.main(a))

    prof = sub.add_parser("profile", help="profile extauthz under load (py-spy)")
    prof.add_argument("--out", help="output directory (default .bench/profile-<timestamp>)")
    prof.add_argument("--duration", type=float, default=8.0)
    prof.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    prof.add_argument("--scenarios", default="jwt-rs256-warm,apikey")
    prof.set_defaults(func=lambda a: __import__("bench.profile").profile.main(a))

    http = sub.add_parser("http", help="experiment: Envoy's HTTP ext_authz on asyncio/uvloop")
    http.add_argument("--out")
    http.add_argument("--duration", type=float, default=5.0)
    http.add_argument("--scenarios", default="apikey,jwt-rs256-warm,deny-401")
    http.add_argument("--concurrency", default="1,10,50")
    http.set_defaults(func=lambda a: __import__("bench.httpauthz").httpauthz.main(a))
    parser.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
