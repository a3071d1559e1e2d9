"""Experiment: Envoy's *HTTP* ext_authz protocol served by a lean asyncio server (uvloop).

Why: the profile shows grpcio (server core + Cython + aio glue) costs several times what the
decision itself costs. Envoy can also ask an authorizer over plain HTTP/1.1 (``http_service``):
it sends the client's headers (``allowed_headers``), a 200 answer allows and its
``allowed_upstream_headers`` are added to the upstream request (``x-envoy-auth-headers-to-remove``
lists headers to drop); any other answer is passed to the client with its status, body and
``allowed_client_headers``. No protobuf, no HTTP/2 framing, and Envoy keeps a pool of HTTP/1.1
connections — several per worker under load, which SO_REUSEPORT *does* spread across processes.

This module serves that protocol with extauthz's own :class:`~extauthz.pipeline.Engine` (same
snapshot, same decisions, same metrics calls and decision log as the gRPC servicer), on a
hand-rolled HTTP/1.1 parser (Envoy is the only client; no pipelining, bounded header size). It
was the experiment that justified the product transport, :mod:`extauthz.http_authz` (httptools
parser, shared tests, ``extauthz serve --http-authz-address``); ``scripts/bench http`` now
measures gRPC, the product HTTP transport and this experiment on uvloop side by side.

Limits of the mapping: HTTP mode has no ``context_extensions`` (extauthz routes by its own
matchers), no peer certificate, and Envoy prefixes the path with ``path_prefix`` (stripped here).

``python -m bench.httpauthz --port P --config C [--uvloop] [--reuse-port]``, and the driver
:func:`main` (``scripts/bench http``) compares it with the gRPC server through Envoy in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Coroutine
from functools import partial
from types import MappingProxyType, SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

from bench.envoyconf import PATH_PREFIX, envoy_http_config

MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            429: "Too Many Requests", 503: "Service Unavailable"}


def _drive(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    try:
        coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, coro


class AuthzProtocol(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]},{value}" if key in headers else value
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.app.handle(self.transport, method, target, headers, body)


class App:
    def __init__(self, config: str) -> None:
        from extauthz.decisionlog import DecisionLog
        from extauthz.metrics import Metrics
        from extauthz.pipeline import Engine
        from extauthz.snapshot import load_snapshot

        self.metrics = Metrics()
        self.snapshot = load_snapshot(config, self.metrics)
        self.engine = Engine(self.metrics, self.snapshot)
        self.dlog = DecisionLog(open("/dev/null", "w"),  # noqa: SIM115
                                dropped=self.metrics.decision_log_dropped)

    def handle(self, transport: Any, method: str, target: str, headers: dict[str, str],
               body: bytes) -> None:
        from extauthz.request import split_host
        from extauthz.types import Headers, RequestView

        started = time.perf_counter()
        raw_path = target.removeprefix(PATH_PREFIX) or "/"
        path, _, raw_query = raw_path.partition("?")
        query = (MappingProxyType(dict(parse_qsl(raw_query, keep_blank_values=True)))
                 if raw_query else MappingProxyType({}))
        authority = headers.get("host", "")
        view = RequestView(
            method=method, host=split_host(authority), path=path, raw_query=raw_query,
            query=query, scheme=headers.get("x-forwarded-proto", "http"),
            headers=Headers.from_lowercase(headers), body=body,
            source_address=headers.get("x-forwarded-for", "").split(",")[-1].strip(),
            request_id=headers.get("x-request-id", ""),
        )
        done, value = _drive(self.engine.check(view))
        if done:
            self.respond(transport, view, value, started)
        else:
            task = asyncio.ensure_future(_finish(value))
            task.add_done_callback(
                lambda t: self.respond(transport, view, t.result(), started))

    def respond(self, transport: Any, view: Any, decision: Any, started: float) -> None:
        if decision.allowed:
            out = ["HTTP/1.1 200 OK", "content-length: 0"]
            out += [f"{k}: {v}" for k, v in decision.upstream_headers]
            if decision.remove_headers:
                out.append("x-envoy-auth-headers-to-remove: " + ",".join(decision.remove_headers))
            payload = b""
        else:
            payload = decision.body.encode()
            out = [f"HTTP/1.1 {decision.http_status} {_REASONS.get(decision.http_status, 'X')}",
                   f"content-length: {len(payload)}"]
            out += [f"{k}: {v}" for k, v in decision.response_headers]
        transport.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
        elapsed = time.perf_counter() - started
        self.metrics.checks.labels(decision.route, decision.outcome.value,
                                   decision.reason.value).inc()
        self.metrics.check_duration.labels(decision.route).observe(elapsed)
        self.dlog.write(view, decision, elapsed)


async def _finish(coro: Coroutine[Any, Any, Any]) -> Any:
    # continue a coroutine that suspended on I/O (a JWKS refetch...) as a task
    return await coro


async def serve(port: int, config: str, reuse_port: bool) -> None:
    app = App(config)
    await app.snapshot.start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AuthzProtocol(app), "127.0.0.1", port,
                                      reuse_port=reuse_port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.httpauthz")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--reuse-port", action="store_true")
    a = p.parse_args(argv)
    if a.uvloop:
        import uvloop

        uvloop.run(serve(a.port, a.config, a.reuse_port))
    else:
        asyncio.run(serve(a.port, a.config, a.reuse_port))
    return 0


# ------------------------------------------------------------------------------------- driver


def main(args: argparse.Namespace) -> int:
    from bench import fixtures, runner, tools
    from bench.runner import output_dir
    from extauthz.demo.procs import LOOPBACK, ManagedProcess, free_ports, http_ok, tcp_open

    out = output_dir(args.out, "http-")
    work = out / "work"
    found = tools.locate()
    if not (found.wrk and found.envoy):
        print("bench: " + found.missing_message(), file=sys.stderr)
        return 3
    fx = fixtures.build(work, new_tokens=10)
    scratch = runner.scratch_dir(out)
    by_name = {s.name: s for s in runner.scenarios(fx)}
    names = args.scenarios.split(",")
    concs = [int(c) for c in args.concurrency.split(",")]
    opts = runner.Options.for_mode("quick", out, duration_s=args.duration, warmup_s=1.0)
    rows: list[dict[str, Any]] = []
    variants = [("grpc (extauthz serve)", "grpc"),
                ("http (extauthz serve --http-authz-address, --grpc-address off)", "http"),
                ("http experiment (bench.httpauthz, uvloop)", "http-uvloop")]
    if importlib.util.find_spec("uvloop") is None:  # not a dependency of extauthz
        print("bench: uvloop is not installed: the experiment's variant is skipped "
              "(pip install uvloop to measure it)", file=sys.stderr)
        variants = variants[:2]
    for label, kind in variants:
        listener, admin, port, hport = free_ports(4)
        if kind in ("grpc", "http"):
            from bench import envoyconf

            argv = [sys.executable, "-m", "extauthz", "--log-level", "WARNING", "serve",
                    "--config", str(fx.config), "--http-address", f"{LOOPBACK}:{hport}"]
            if kind == "grpc":
                text = envoyconf.render(listener_port=listener, admin_port=admin,
                                        extauthz_ports=[port])
                argv += ["--grpc-address", f"{LOOPBACK}:{port}"]
            else:
                text = envoy_http_config(listener_port=listener, admin_port=admin,
                                         authz_ports=[port])
                argv += ["--grpc-address", "off", "--http-authz-address", f"{LOOPBACK}:{port}"]
            server = ManagedProcess(kind, ["/bin/sh", "-c", 'exec "$@" >/dev/null', "sh",
                                           *argv], scratch / f"{kind}.log", cwd=runner.REPO)
        else:
            text = envoy_http_config(listener_port=listener, admin_port=admin, authz_ports=[port])
            argv = [sys.executable, "-m", "bench.httpauthz", "--port", str(port), "--config",
                    str(fx.config), "--uvloop"]
            server = ManagedProcess(kind, argv, scratch / f"{kind}.log", cwd=runner.REPO)
        cfg = scratch / f"envoy-{kind}.yaml"
        cfg.write_text(text)
        envoy = ManagedProcess(f"envoy-{kind}", [
            found.envoy, "-c", str(cfg), "--log-level", "warning", "--concurrency", "1",
            "--disable-hot-restart"], scratch / f"envoy-{kind}.log")
        try:
            server.start().wait_ready(partial(tcp_open, LOOPBACK, port), 60)
            envoy.start().wait_ready(http_ok(f"http://{LOOPBACK}:{admin}/ready"), 30)

            stack: Any = SimpleNamespace(
                grpc_ports=[port], extauthz_pids=[server.pid], envoy=envoy,
                url=partial(runner.loopback_url, listener))
            for name in names:
                sc = by_name[name]
                status, body = runner.send_once(stack.url(sc.path), sc,
                                                runner.first_line(sc.rotate_file))
                if status != sc.expect:
                    print(f"{label} {name}: preflight got {status} {body[:120]}",
                          file=sys.stderr)
                    continue
                for conns in concs:
                    row = runner.measure_wrk(stack, found, sc, conns, opts)
                    row["variant"] = label
                    rows.append(row)
                    print(f"{label:<22} {name:<15} c={conns:<3} {row['rps']:>7.0f} req/s "
                          f"p50 {row['latency_ms']['p50']:.3f} ms cpu "
                          f"{row['extauthz_cpu_us_per_check']:.0f} us "
                          f"bad {row['unexpected_responses']}", flush=True)
            if kind == variants[-1][1]:
                for conns in concs:
                    row = runner.measure_wrk(stack, found, by_name["envoy"], conns, opts)
                    row["variant"] = "Envoy alone"
                    rows.append(row)
                    print(f"Envoy alone c={conns}: {row['rps']:.0f} req/s", flush=True)
        finally:
            envoy.stop()
            server.stop()
    base = {r["concurrency"]: r for r in rows if r["variant"] == "Envoy alone"}
    lines = ["| transport | scenario | conc | req/s | x Envoy | p50 ms | p99 ms | CPU us/check "
             "| bad |", "|" + "---|" * 9]
    for r in rows:
        b = base.get(r["concurrency"])
        ratio = r["rps"] / b["rps"] if b and b["rps"] else None
        r["rps_ratio"] = round(ratio, 3) if ratio else None
        lines.append(f"| {r['variant']} | {r['scenario']} | {r['concurrency']} | {r['rps']:.0f} "
                     f"| {r['rps_ratio']} | {r['latency_ms']['p50']:.3f} "
                     f"| {r['latency_ms']['p99']:.3f} | {r['extauthz_cpu_us_per_check']:.0f} "
                     f"| {r['unexpected_responses']} |")
    text = "\n".join(lines) + "\n"
    (out / "http.md").write_text(text)
    (out / "http.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
