"""The benchmark run: start Envoy and extauthz on 127.0.0.1, load them, collect one result set.

Order within a run (so every ratio compares measurements taken minutes apart, not days):

1. fixtures (keys, tokens, PKI, signed request, configuration), Envoy config (validated);
2. extauthz (``--workers`` processes, one endpoint each) and Envoy start; every scenario is sent
   once through Envoy and must get its expected status (else it is skipped, with the reason);
3. per concurrency: Envoy alone, every scenario, Envoy alone again. The baseline of that
   concurrency is the mean of the two Envoy-alone runs; their difference is reported as drift
   (the machine is shared: a large drift says the numbers around it are noisy);
4. the gRPC server directly with h2load (one HTTP/2 connection, 1/10/50 concurrent streams);
5. the scaling sweep: one extauthz per point, same Envoy, wrk at 10 connections.

Files: configuration and key material live in ``work/``; everything written *while* extauthz runs
(wrk scripts, h2load logs, process logs, Envoy's config) goes to ``scratch/``. extauthz watches its
configuration's directory for changes (hot reload), so a file created next to the configuration
during a measurement would trigger a reload in the middle of it; with 10 000 API keys such a
reload took the CPU the checks needed (an early sweep measured that instead of the lookup).

Every measured wrk/h2load run is preceded by a short warm-up run of the same kind. CPU per check
is the extauthz processes' utime+stime delta over the measured run divided by its requests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import apikeys, envoyconf, fixtures, grpcframe, loadgen, procstat
from bench.tools import Tools
from extauthz.demo.procs import LOOPBACK, ManagedProcess, ProcessError, free_ports, http_ok
from extauthz.http_authz import SOURCE_HEADER

REPO = Path(__file__).resolve().parents[1]

#: Envoy -> extauthz transports, in the order a run measures them: ``grpc`` (ext_authz
#: grpc_service, served by grpc.aio in the extauthz process), ``grpc-envoy`` (the same gRPC API
#: served by the Envoy that ``extauthz serve --grpc-server envoy`` starts and supervises, bridged
#: to extauthz's httptools server: extauthz.grpcfront), ``grpc-native`` (the built-in HTTP/2
#: server, ``--grpc-server native``: extauthz.h2grpc) and ``http`` (http_service, served by
#: ``extauthz serve --http-authz-address``)
TRANSPORTS = ("grpc", "grpc-envoy", "grpc-native", "http")
#: the transports that serve the gRPC Check API (h2load can load them directly)
GRPC_TRANSPORTS = ("grpc", "grpc-envoy", "grpc-native")


def output_dir(given: str | None, prefix: str) -> Path:
    """``given``, else ``.bench/<prefix><timestamp>`` (a directory git ignores by itself)."""
    if given:
        out = Path(given).resolve()
    else:
        root = REPO / ".bench"
        root.mkdir(exist_ok=True)
        (root / ".gitignore").write_text("*\n")
        out = root / (prefix + time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rotate_header: str | None = None
    rotate_prefix: str = ""
    rotate_file: Path | None = None
    expect: int = 200
    #: the extauthz route (None: Envoy alone)
    route: str | None = None
    #: load the gRPC server directly with this scenario too
    direct: bool = False
    note: str = ""


def scenarios(fx: fixtures.Fixtures) -> list[Scenario]:
    host = {"host": fixtures.HOST}
    warm_first = fx.warm_tokens.read_text().split("\n", 1)[0]
    return [
        Scenario("envoy", "Envoy alone (direct_response)", "/envoy-alone/x", headers=host),
        Scenario("apikey", "API key", "/s/apikey/orders",
                 headers={**host, "x-api-key": fx.api_key}, route="apikey", direct=True),
        Scenario("jwt-rs256-warm", "JWT RS256, warm cache", "/s/jwt-rs256-warm/orders",
                 headers={**host, "authorization": "Bearer " + warm_first},
                 rotate_header="authorization", rotate_prefix="Bearer ",
                 rotate_file=fx.warm_tokens, route="jwt-rs256-warm", direct=True,
                 note="16 tokens in rotation, all cached after the warm-up"),
        Scenario("jwt-rs256-new", "JWT RS256, every token new", "/s/jwt-rs256-new/orders",
                 headers=host, rotate_header="authorization", rotate_prefix="Bearer ",
                 rotate_file=fx.rs_new_tokens, route="jwt-rs256-new", direct=True,
                 note="verified-token cache off for this issuer: every check is a full verify"),
        Scenario("jwt-es256-new", "JWT ES256, every token new", "/s/jwt-es256-new/orders",
                 headers=host, rotate_header="authorization", rotate_prefix="Bearer ",
                 rotate_file=fx.es_new_tokens, route="jwt-es256-new",
                 note="cache off: every check verifies ECDSA P-256"),
        Scenario("mtls", "mTLS (XFCC, cached chain)", "/s/mtls/orders",
                 headers={**host, "x-forwarded-client-cert": fx.xfcc}, route="mtls", direct=True,
                 note="client certificate in x-forwarded-client-cert (plain listener)"),
        Scenario("hmac", "HMAC RFC 9421 + body digest", "/s/hmac/orders?a=1", method="POST",
                 headers={**host, **fx.hmac_headers}, body=fixtures.HMAC_BODY, route="hmac",
                 direct=True, note=f"{len(fixtures.HMAC_BODY)}-byte body buffered by Envoy"),
        Scenario("deny-401", "deny: no credential (401)", "/s/deny-401/orders", headers=host,
                 expect=401, route="deny-401", direct=True),
        Scenario("policy", f"policy: {fx.policy_kind}",
                 f"{fixtures.POLICY_PATH}?{fixtures.POLICY_QUERY}",
                 headers={**host, "authorization": "Bearer " + fx.policy_token,
                          "x-tenant": "acme"},
                 route="policy", direct=True, note="JWT (cached) + the policy"),
    ]


# ----------------------------------------------------------------------------------- options


@dataclass
class Options:
    out: Path
    mode: str = "full"  # full | quick | smoke
    concurrency: Sequence[int] = (1, 10, 50)
    duration_s: float = 8.0
    warmup_s: float = 1.0
    direct_duration_s: float = 5.0
    scenarios: Sequence[str] | None = None
    direct: bool = True
    sweep: bool = True
    workers: int = 1
    envoy_concurrency: int = 1
    #: Envoy -> extauthz transports measured end to end (see TRANSPORTS), each against its own
    #: Envoy-alone baseline. The direct h2load runs load the gRPC ones; the sweep uses the last.
    transports: Sequence[str] = ("grpc",)
    new_tokens: int = 2000
    #: extra ``extauthz serve`` arguments (e.g. ``--no-decision-log``)
    extauthz_args: Sequence[str] = ()
    sweep_points: dict[str, list[int]] = field(default_factory=dict)
    #: keys for scripts/measure_apikeys.py (load time and memory of many API keys; 0: skip)
    api_keys_memory: int = 0
    sweep_duration_s: float = 5.0
    log: Callable[[str], None] = print

    @classmethod
    def for_mode(cls, mode: str, out: Path, **overrides: Any) -> Options:
        base: dict[str, Any] = {"out": out, "mode": mode}
        if mode == "full":
            # two transports x 8 scenarios x 3 concurrencies: 6 s per point keeps it ~13 min
            base.update(transports=TRANSPORTS, duration_s=6.0, api_keys_memory=100_000,
                        sweep_points={"routes": [1, 100, 1000], "api_keys": [10, 10_000, 100_000],
                                      "issuers": [1, 10, 100], "cached_tokens": [1, 100_000]})
        elif mode == "quick":
            base.update(transports=TRANSPORTS, duration_s=3.0, warmup_s=0.5,
                        api_keys_memory=100_000,
                        direct_duration_s=2.0, new_tokens=500, sweep_duration_s=2.0,
                        sweep_points={"routes": [1, 1000], "api_keys": [10, 10_000],
                                      "issuers": [1, 100], "cached_tokens": [1, 10_000]})
        elif mode == "smoke":
            base.update(transports=TRANSPORTS, duration_s=1.0, warmup_s=1.0,
                        direct_duration_s=1.0, concurrency=(10,),
                        scenarios=("apikey",), new_tokens=10, sweep=False)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


# ------------------------------------------------------------------------------------- stack


class Stack:
    """extauthz worker processes + Envoy, all on 127.0.0.1, stopped by PID.

    What "extauthz" costs is every process serving the check: with ``grpc-envoy`` each worker is
    the extauthz process *and* the Envoy it supervises (its child, found after start-up), and
    their CPU is counted together (:attr:`serving_pids`); RSS per worker is their sum.
    """

    def __init__(self, tools: Tools, work: Path, workers: int, envoy_concurrency: int,
                 extauthz_args: Sequence[str] = (), transport: str = "grpc") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        self.tools = tools
        self.transport = transport
        self.extauthz_args = list(extauthz_args)
        self.work = work
        ports = free_ports(2 + 3 * workers)
        self.listener, self.admin = ports[0], ports[1]
        self.grpc_ports = ports[2:2 + workers]
        self.http_ports = ports[2 + workers:2 + 2 * workers]
        #: the HTTP ext_authz listeners (used when transport == "http")
        self.authz_ports = ports[2 + 2 * workers:]
        self.envoy_concurrency = envoy_concurrency
        self.extauthz: list[ManagedProcess] = []
        #: per worker: the extauthz process and its descendants (the gRPC front's Envoy)
        self.worker_groups: list[list[int]] = []
        self.envoy: ManagedProcess | None = None

    @property
    def extauthz_pids(self) -> list[int]:
        return [p.pid for p in self.extauthz if p.pid is not None]

    @property
    def serving_pids(self) -> list[int]:
        """Every process serving checks (the CPU counted as "extauthz CPU")."""
        return [pid for group in self.worker_groups for pid in group]

    def start_extauthz(self, config: Path, timeout: float = 180.0) -> None:
        self.stop_extauthz()
        procs = []
        for i, (gport, hport, aport) in enumerate(
                zip(self.grpc_ports, self.http_ports, self.authz_ports, strict=True)):
            argv = [sys.executable, "-m", "extauthz", "--log-level", "WARNING", "serve",
                    "--config", str(config), "--grpc-address", f"{LOOPBACK}:{gport}",
                    "--http-address", f"{LOOPBACK}:{hport}", "--grace-seconds", "1",
                    *self.extauthz_args]
            if self.transport == "http":
                # the recommended HTTP deployment: no gRPC server (its poller costs CPU per
                # event-loop turn even without gRPC traffic)
                argv[argv.index("--grpc-address") + 1] = "off"
                argv += ["--http-authz-address", f"{LOOPBACK}:{aport}",
                         "--http-authz-source-header", SOURCE_HEADER]
            elif self.transport == "grpc-envoy":
                # the gRPC port served by the Envoy extauthz supervises (extauthz.grpcfront)
                argv += ["--grpc-server", "envoy"]
            elif self.transport == "grpc-native":
                # the built-in HTTP/2 server (extauthz.h2grpc)
                argv += ["--grpc-server", "native"]
            else:
                argv += ["--grpc-server", "grpcio"]
            # The decision log stays on (the default) but goes to /dev/null: a log collector's
            # cost is not ours, the JSON encoding is. exec keeps the PID that we measure.
            shell = ["/bin/sh", "-c", 'exec "$@" >/dev/null', "sh", *argv]
            procs.append(ManagedProcess(f"extauthz-{i}", shell, self.work / f"extauthz-{i}.log",
                                        cwd=REPO).start())
        self.extauthz = procs
        for proc, hport in zip(procs, self.http_ports, strict=True):
            proc.wait_ready(http_ok(f"http://{LOOPBACK}:{hport}/readyz"), timeout)
        # /readyz includes the gRPC front's Envoy: it runs by now
        self.worker_groups = [[p.pid, *procstat.descendants(p.pid)]
                              for p in procs if p.pid is not None]

    def start_envoy(self) -> None:
        assert self.tools.envoy is not None
        config = self.work / "envoy.yaml"
        if self.transport == "http":
            text = envoyconf.envoy_http_config(listener_port=self.listener, admin_port=self.admin,
                                               authz_ports=self.authz_ports)
        else:
            text = envoyconf.render(listener_port=self.listener, admin_port=self.admin,
                                    extauthz_ports=self.grpc_ports)
        config.write_text(text)
        argv = [self.tools.envoy, "-c", str(config), "--log-level", "warning",
                "--concurrency", str(self.envoy_concurrency), "--disable-hot-restart",
                "--drain-time-s", "1"]
        self.envoy = ManagedProcess("envoy", argv, self.work / "envoy.log").start()
        self.envoy.wait_ready(http_ok(f"http://{LOOPBACK}:{self.admin}/ready"), 30)

    def stop_extauthz(self) -> None:
        for proc in self.extauthz:
            proc.stop()
        self.extauthz = []
        self.worker_groups = []

    def stop(self) -> None:
        self.stop_extauthz()
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None

    def url(self, path: str = "/") -> str:
        return f"http://{LOOPBACK}:{self.listener}{path}"


def loopback_url(port: int, path: str = "/") -> str:
    return f"http://{LOOPBACK}:{port}{path}"


@contextlib.contextmanager
def running_stack(tools: Tools, work: Path, opts: Options, config: Path,
                  transport: str = "grpc") -> Iterator[Stack]:
    stack = Stack(tools, work, opts.workers, opts.envoy_concurrency, opts.extauthz_args,
                  transport)
    try:
        stack.start_extauthz(config)
        stack.start_envoy()
        yield stack
    finally:
        stack.stop()


# --------------------------------------------------------------------------------- measuring


def send_once(url: str, scenario: Scenario, first_rotating: str | None) -> tuple[int, str]:
    headers = {k: v for k, v in scenario.headers.items() if k != "host"}
    headers["Host"] = scenario.headers.get("host", fixtures.HOST)
    if scenario.rotate_header and first_rotating is not None:
        headers[scenario.rotate_header] = scenario.rotate_prefix + first_rotating
    req = urllib.request.Request(url, data=scenario.body or None, headers=headers,  # noqa: S310
                                 method=scenario.method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback http)
            return int(resp.status), resp.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(300).decode("utf-8", "replace")


def first_line(path: Path | None) -> str | None:
    if path is None:
        return None
    with path.open() as f:
        return f.readline().strip()


def _script(work: Path, sc: Scenario, threads: int, limit: int = 0, name: str = "") -> Path:
    path = work / f"wrk-{name or sc.name}.lua"
    path.write_text(loadgen.wrk_script(
        method=sc.method, path=sc.path, headers=sc.headers, body=sc.body,
        rotate_header=sc.rotate_header, rotate_prefix=sc.rotate_prefix,
        rotate_file=sc.rotate_file, threads=threads, max_requests_per_thread=limit))
    return path


def measure_wrk(stack: Stack, tools: Tools, sc: Scenario, conns: int, opts: Options,
                *, warm: bool = True) -> dict[str, Any]:
    assert tools.wrk is not None
    threads = max(1, min(2, conns))
    script = _script(scratch_dir(opts.out), sc, threads)
    url = stack.url()
    if warm and opts.warmup_s > 0:
        loadgen.run_wrk(tools.wrk, url, script, connections=conns, duration_s=opts.warmup_s,
                        threads=threads)
    groups = worker_groups(stack)
    ext = procstat.CpuWindow([pid for group in groups for pid in group]).start()
    env = procstat.CpuWindow([stack.envoy.pid] if stack.envoy and stack.envoy.pid else []).start()
    result = loadgen.run_wrk(tools.wrk, url, script, connections=conns,
                             duration_s=opts.duration_s, threads=threads)
    ext_cpu, env_cpu = ext.stop(), env.stop()
    return _row(sc.name, result, ext_cpu, env_cpu, groups, expect=sc.expect)


def worker_groups(stack: Any) -> list[list[int]]:
    """The processes of each worker: a :class:`Stack`'s groups, or one process per PID of the
    minimal stacks ``scripts/bench servers`` and ``http`` build (``extauthz_pids`` only)."""
    groups = getattr(stack, "worker_groups", None)
    return groups if groups else [[pid] for pid in stack.extauthz_pids]


def _row(name: str, result: loadgen.LoadResult, ext_cpu: float, env_cpu: float | None,
         groups: Sequence[Sequence[int]], *, expect: int) -> dict[str, Any]:
    """One measured point. ``groups``: the processes of each worker (RSS per worker is the sum
    of its group's; the worker figure is the largest)."""
    requests = max(1, result.requests)
    unexpected = result.non_2xx if expect < 300 else result.requests - result.non_2xx
    ext_us = round(ext_cpu / requests * 1e6, 1)
    env_us = round(env_cpu / requests * 1e6, 1) if env_cpu is not None else None
    return {
        "scenario": name,
        "tool": result.tool,
        "concurrency": result.connections,
        "requests": result.requests,
        "duration_s": round(result.duration_s, 3),
        "rps": round(result.rps, 1),
        "latency_ms": {k: round(v / 1000, 4) for k, v in result.latency_us.items()
                       if not math.isnan(v)},
        "extauthz_cpu_us_per_check": ext_us,
        "extauthz_cpu_cores": round(ext_cpu / result.duration_s, 3) if result.duration_s else 0,
        "envoy_cpu_us_per_request": env_us,
        # whole pod: the proxy's Envoy + everything extauthz runs, per request
        "pod_cpu_us_per_check": round(ext_us + env_us, 1) if env_us is not None else None,
        "extauthz_rss_mib": round(max((procstat.total_rss_mib(g) for g in groups), default=0), 1),
        "extauthz_rss_total_mib": round(sum(procstat.total_rss_mib(g) for g in groups), 1),
        #: processes whose CPU and RSS are counted as extauthz's (2 per worker with grpc-envoy)
        "serving_processes": sum(len(g) for g in groups),
        "expected_status": expect,
        "unexpected_responses": unexpected,
        "errors": result.errors,
    }


def measure_direct(stack: Stack, tools: Tools, sc: Scenario, streams: int, body: Path,
                   opts: Options) -> dict[str, Any]:
    assert tools.h2load is not None
    url = f"http://{LOOPBACK}:{stack.grpc_ports[0]}{grpcframe.CHECK_PATH}"
    log = scratch_dir(opts.out) / f"h2load-{sc.name}-{streams}.log"
    groups = worker_groups(stack)[:1]
    # warm-up: a separate short run (h2load's own --warm-up-time still counts in its log)
    loadgen.run_h2load(tools.h2load, url, body, streams=streams,
                       duration_s=max(0.3, opts.warmup_s), warmup_s=0, log_file=log)
    ext = procstat.CpuWindow(groups[0] if groups else []).start()
    result = loadgen.run_h2load(tools.h2load, url, body, streams=streams,
                                duration_s=opts.direct_duration_s, warmup_s=0, log_file=log)
    row = _row(sc.name, result, ext.stop(), None, groups, expect=200)
    log.unlink(missing_ok=True)
    return row


def grpc_check_status(port: int, message: Any) -> tuple[int, int]:
    """(gRPC status code, HTTP status of the decision) for one Check sent with grpcio."""
    import grpc

    from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc

    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        response = stub.Check(message, timeout=10)
    http = 200 if response.status.code == 0 else int(response.denied_response.status.code)
    return int(response.status.code), http


# ------------------------------------------------------------------------------------- sweep


def checks_counted(stack: Stack) -> int:
    """Sum of ``extauthz_checks_total`` over every worker's /metrics (0 when unreadable)."""
    total = 0.0
    for port in stack.http_ports:
        try:
            url = f"http://{LOOPBACK}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("extauthz_checks_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def fill_until(wrk: str, stack: Stack, script: Path, count: int, *, timeout_s: float) -> int:
    """Run wrk with ``script`` until the servers counted ``count`` more checks; bounded."""
    before = checks_counted(stack)
    argv = [wrk, "-t", "2", "-c", "10", "-d", f"{int(timeout_s)}s", "--timeout", "5s",
            "-s", str(script), stack.url()]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    done = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            done = checks_counted(stack) - before
            if done >= count:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return done


def run_sweep(stack: Stack, tools: Tools, fx: fixtures.Fixtures,
              opts: Options) -> list[dict[str, Any]]:
    work = opts.out / "work"
    rows: list[dict[str, Any]] = []
    host = {"host": fixtures.HOST}
    warm_token = first_line(fx.warm_tokens) or ""
    api = {**host, "x-api-key": fx.api_key}
    for dim, points in opts.sweep_points.items():
        for n in points:
            started = time.monotonic()
            fill: Scenario | None = None
            layout = ""
            if dim == "routes":
                config = fixtures.sweep_routes_config(work, n, fx)
                sc = Scenario(f"sweep-routes-{n}", "", "/sweep/match/orders", headers=api)
            elif dim == "api_keys":
                config, layout = fixtures.sweep_keys_config(work, n, fx)
                sc = Scenario(f"sweep-keys-{n}", "", "/sweep/target/orders", headers=api)
            elif dim == "issuers":
                config = fixtures.sweep_issuers_config(work, n, fx)
                sc = Scenario(f"sweep-issuers-{n}", "", "/sweep/target/orders",
                              headers={**host, "authorization": "Bearer " + warm_token})
            elif dim == "cached_tokens":
                config = fixtures.sweep_tokens_config(work, max(n, 1) + 1000)
                if n <= 1:
                    sc = Scenario(f"sweep-tokens-{n}", "", "/sweep/target/orders",
                                  headers={**host, "authorization": "Bearer " + warm_token})
                else:
                    tokens = fixtures.sweep_token_file(work, n)
                    sc = Scenario(f"sweep-tokens-{n}", "", "/sweep/target/orders", headers=host,
                                  rotate_header="authorization", rotate_prefix="Bearer ",
                                  rotate_file=tokens)
                    fill = sc
            else:
                raise ValueError(dim)
            opts.log(f"  sweep {dim}={n}: starting extauthz ({config.name})")
            stack.start_extauthz(config)
            load_s = time.monotonic() - started
            status, text = send_once(stack.url(sc.path), sc, first_line(sc.rotate_file))
            if status != 200:
                raise RuntimeError(f"sweep {dim}={n}: expected 200, got {status}: {text[:200]}")
            if fill is not None:
                # every token verified once: one pass over the file, stopped when the servers
                # have counted that many checks (wrk itself would sleep out its whole -d)
                script = _script(scratch_dir(opts.out), fill, 2, limit=(n + 1) // 2,
                                 name=f"fill-{n}")
                t0 = time.monotonic()
                checked = fill_until(tools.wrk or "wrk", stack, script, n, timeout_s=900)
                opts.log(f"    filled the token cache: {checked} checks in "
                         f"{time.monotonic() - t0:.1f}s")
            sweep_opts = Options(**{**opts.__dict__, "duration_s": opts.sweep_duration_s})
            row = measure_wrk(stack, tools, sc, 10, sweep_opts)
            row.update(dimension=dim, size=n, startup_s=round(load_s, 1))
            if layout:
                row["layout"] = layout
            rows.append(row)
            opts.log(f"    {row['rps']:.0f} req/s, p50 {row['latency_ms'].get('p50')} ms, "
                     f"RSS {row['extauthz_rss_mib']} MiB")
    # ratios to the smallest point of each dimension
    for dim in opts.sweep_points:
        dim_rows = [r for r in rows if r["dimension"] == dim]
        if dim_rows:
            base = dim_rows[0]["rps"] or 1
            for r in dim_rows:
                r["rps_ratio_to_smallest"] = round(r["rps"] / base, 3)
    return rows


# --------------------------------------------------------------------------------------- run


def environment(tools: Tools, opts: Options) -> dict[str, Any]:
    try:  # optional for extauthz (--grpc-server envoy does without it)
        import grpc

        grpcio = grpc.__version__
    except ImportError:
        grpcio = "not installed"
    load = os.getloadavg()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": opts.mode,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "grpcio": grpcio,
        "tools": tools.versions,
        "workers": opts.workers,
        "envoy_concurrency": opts.envoy_concurrency,
        "extauthz_args": list(opts.extauthz_args),
        "transports": list(opts.transports),
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def scratch_dir(out: Path) -> Path:
    """Where files written during a run go: not extauthz's configuration directory."""
    path = out / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(tools: Tools, opts: Options) -> dict[str, Any]:
    """Run the benchmark; returns the result document (also the JSON file's content)."""
    work = opts.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = opts.log
    log(f"fixtures -> {work}")
    fx = fixtures.build(work, new_tokens=opts.new_tokens)
    result: dict[str, Any] = {"environment": environment(tools, opts), "notes": list(fx.notes),
                              "scenarios": {}, "e2e": [], "direct": [], "sweep": [],
                              "skipped": {}}
    all_scenarios = scenarios(fx)
    wanted = set(opts.scenarios) if opts.scenarios else None
    selected = [s for s in all_scenarios if s.name == "envoy" or wanted is None
                or s.name in wanted]
    result["scenarios"] = {s.name: {"title": s.title, "route": s.route, "note": s.note,
                                    "expected_status": s.expect} for s in selected}
    for index, transport in enumerate(opts.transports):
        with running_stack(tools, scratch_dir(opts.out), opts, fx.config, transport) as stack:
            log(f"[{transport}] extauthz x{opts.workers}, envoy on {stack.listener}")
            _run_e2e(stack, tools, selected, opts, result, transport)
            # the direct h2load runs need a gRPC server, which the HTTP stack turns off
            if transport in GRPC_TRANSPORTS and opts.direct and tools.h2load:
                _run_direct(stack, tools, selected, opts, result, transport)
            elif transport in GRPC_TRANSPORTS and opts.direct:
                result["skipped"]["direct"] = "h2load not found (Debian package nghttp2-client)"
            if index == len(opts.transports) - 1 and opts.sweep and opts.sweep_points:
                log(f"scaling sweep (wrk, 10 connections, {transport})")
                result["sweep"] = run_sweep(stack, tools, fx, opts)
    if opts.api_keys_memory and apikeys.available():
        log(f"API keys at scale: scripts/measure_apikeys.py --keys {opts.api_keys_memory}")
        try:
            rows, heading = apikeys.measure(opts.api_keys_memory)
            result["api_keys_memory"] = {"keys": opts.api_keys_memory, "heading": heading,
                                         "rows": rows}
        except (RuntimeError, subprocess.SubprocessError) as exc:
            result["skipped"]["api_keys_memory"] = str(exc)
    elif opts.api_keys_memory:
        result["skipped"]["api_keys_memory"] = "scripts/measure_apikeys.py is not in this tree"
    if opts.direct and not set(GRPC_TRANSPORTS) & set(opts.transports):
        result["skipped"]["direct"] = "no gRPC transport was measured (--transports)"
    result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _run_e2e(stack: Stack, tools: Tools, selected: list[Scenario], opts: Options,
             result: dict[str, Any], transport: str) -> None:
    log = opts.log
    active: list[Scenario] = []
    for sc in selected:
        status, text = send_once(stack.url(sc.path), sc, first_line(sc.rotate_file))
        if status != sc.expect:
            reason = f"preflight: expected HTTP {sc.expect}, got {status}: {text[:200]}"
            result["skipped"][f"{transport}:{sc.name}"] = reason
            log(f"  skip {sc.name}: {reason}")
            continue
        active.append(sc)
    envoy_sc = next(s for s in active if s.name == "envoy")
    for conns in opts.concurrency:
        log(f"[{transport}] concurrency {conns}")
        baseline = [measure_wrk(stack, tools, envoy_sc, conns, opts)]
        log(f"  {'envoy':<16} {baseline[0]['rps']:>9.0f} req/s")
        rows = []
        for sc in active:
            if sc.name == "envoy":
                continue
            row = measure_wrk(stack, tools, sc, conns, opts)
            rows.append(row)
            log(f"  {sc.name:<16} {row['rps']:>9.0f} req/s  p50 "
                f"{row['latency_ms'].get('p50', 0):.3f} ms  p99 "
                f"{row['latency_ms'].get('p99', 0):.3f} ms  cpu "
                f"{row['extauthz_cpu_us_per_check']:.0f} us/check")
        baseline.append(measure_wrk(stack, tools, envoy_sc, conns, opts))
        log(f"  {'envoy (again)':<16} {baseline[1]['rps']:>9.0f} req/s")
        base = _merge_baseline(baseline)
        base["transport"] = transport
        result["e2e"].append(base)
        for row in rows:
            _add_ratios(row, base)
            row["transport"] = transport
            result["e2e"].append(row)


def _run_direct(stack: Stack, tools: Tools, active: list[Scenario], opts: Options,
                result: dict[str, Any], transport: str = "grpc") -> None:
    opts.log(f"[{transport}] gRPC server directly (h2load, 1 HTTP/2 connection)")
    for sc in active:
        if not sc.direct:
            continue
        message = grpcframe.check_request(
            method=sc.method, path=sc.path, body=sc.body, route=sc.route,
            headers={k: v for k, v in sc.headers.items() if k != "host"}
            | ({sc.rotate_header: sc.rotate_prefix + (first_line(sc.rotate_file) or "")}
               if sc.rotate_header else {}))
        code, http = grpc_check_status(stack.grpc_ports[0], message)
        if http != sc.expect:
            result["skipped"][f"direct:{transport}:{sc.name}"] = (
                f"gRPC preflight: HTTP {http} (gRPC {code}), expected {sc.expect}")
            continue
        body = grpcframe.write_frame(scratch_dir(opts.out) / f"check-{sc.name}.bin", message)
        for streams in opts.concurrency:
            row = measure_direct(stack, tools, sc, streams, body, opts)
            row["grpc_status"] = code
            row["transport"] = transport
            result["direct"].append(row)
            opts.log(f"  {sc.name:<16} m={streams:<3} {row['rps']:>9.0f} req/s  p50 "
                     f"{row['latency_ms'].get('p50', 0):.3f} ms  cpu "
                     f"{row['extauthz_cpu_us_per_check']:.0f} us/check")


def _merge_baseline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first, second = runs
    merged = dict(first)
    merged["rps"] = round((first["rps"] + second["rps"]) / 2, 1)
    merged["requests"] = first["requests"] + second["requests"]
    merged["latency_ms"] = {k: round((first["latency_ms"][k] + second["latency_ms"][k]) / 2, 4)
                            for k in first["latency_ms"] if k in second["latency_ms"]}
    for key in ("envoy_cpu_us_per_request", "extauthz_cpu_us_per_check"):
        if first[key] is not None and second[key] is not None:
            merged[key] = round((first[key] + second[key]) / 2, 1)
    merged["baseline_runs_rps"] = [first["rps"], second["rps"]]
    merged["baseline_drift"] = round(abs(first["rps"] - second["rps"])
                                     / max(first["rps"], second["rps"], 1), 3)
    merged["rps_ratio"] = 1.0
    return merged


def _add_ratios(row: dict[str, Any], base: dict[str, Any]) -> None:
    row["rps_ratio"] = round(row["rps"] / base["rps"], 3) if base["rps"] else None
    lat, blat = row["latency_ms"], base["latency_ms"]
    row["added_latency_ms"] = {p: round(lat[p] - blat[p], 4) for p in ("p50", "p99")
                               if p in lat and p in blat}
    row["latency_ratio"] = {p: round(lat[p] / blat[p], 2) for p in ("p50", "p99")
                            if p in lat and blat.get(p)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def stop_processes(procs: Sequence[ManagedProcess]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessError, subprocess.SubprocessError, OSError):
            proc.stop()
