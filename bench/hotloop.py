"""The HTTP transport's whole per-check path, in process (``scripts/bench micro --transport http``).

What Envoy's ``http_service`` costs extauthz per check minus the kernel: one
:class:`~extauthz.http_authz.HttpAuthzServer` (the real one: engine, metrics, decision log to
/dev/null) and one of its connections, on one end of a Unix socket pair whose other end (in the
same event loop) plays Envoy: it sends the bytes of one authorization request as Envoy sends it
(the request line with ``path_prefix``, the client's headers, Envoy's ``x-request-id``,
``x-forwarded-proto``, ``x-envoy-expected-rq-timeout-ms``, ``content-length`` and the
source-address header) and the next one as soon as the answer arrives. Per check: the event
loop's turns, ``recv``/``send``, parse, view, check, render, metrics, decision log (its thread
included: the figure is the process's CPU time), plus the small cost of the client side.

Subtracting this from the CPU per check measured through Envoy gives the kernel's loopback TCP
and the cost of a CPU shared with Envoy and the load generator. ``--profile`` runs the same loop
under cProfile and prints the functions with the most own time (the decision log's writer thread
is not in it: cProfile sees one thread; ``declog-json`` in ``scripts/bench micro`` is its work).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import socket
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any, cast

from bench import fixtures
from bench.runner import Scenario, first_line, scenarios

#: scenarios measured by default: the cached paths of issue 16's CPU target, and a deny
DEFAULT = ("apikey", "jwt-rs256-warm", "mtls", "deny-401")


class _Client(asyncio.Protocol):
    """Envoy's side of one connection: sends the request again as soon as the answer is in."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.transport: asyncio.Transport | None = None
        self.left = 0
        self.done: asyncio.Future[None] | None = None
        self.answers = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it

    def run(self, n: int) -> asyncio.Future[None]:
        assert self.transport is not None
        self.left = n
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(self.raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        # answers are small: one read is one answer (the next request is sent only after it)
        self.answers += 1
        self.left -= 1
        if self.left > 0 and self.transport is not None:
            self.transport.write(self.raw)
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)


def envoy_request(sc: Scenario, prefix: str = "/check") -> bytes:
    """The HTTP/1.1 authorization request Envoy 1.40 sends for ``sc`` (bench's Envoy config:
    every client header allowed, the source address added)."""
    from extauthz.http_authz import SOURCE_HEADER

    headers = dict(sc.headers)
    if sc.rotate_header:
        headers[sc.rotate_header] = sc.rotate_prefix + (first_line(sc.rotate_file) or "")
    lines = [f"{sc.method} {prefix}{sc.path} HTTP/1.1", f"host: {headers.pop('host')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["user-agent: wrk", "x-forwarded-proto: http", f"x-request-id: {uuid.uuid4()}",
              "x-envoy-expected-rq-timeout-ms: 5000", f"{SOURCE_HEADER}: 127.0.0.1",
              f"content-length: {len(sc.body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + sc.body


async def measure(work: Path, iterations: int, names: list[str] | None,
                  profile: bool = False) -> list[dict[str, Any]]:
    """µs of CPU (process time) per check, per scenario; with ``profile`` the cProfile text."""
    from extauthz.decisionlog import DecisionLog
    from extauthz.http_authz import SOURCE_HEADER, HttpAuthzServer, _Connection
    from extauthz.metrics import Metrics
    from extauthz.pipeline import Engine
    from extauthz.snapshot import load_snapshot

    fx = fixtures.build(work, new_tokens=10)
    metrics = Metrics()
    snapshot = load_snapshot(fx.config, metrics)
    await snapshot.start()
    engine = Engine(metrics, snapshot)
    sink_file = open("/dev/null", "w")  # noqa: SIM115 (closed below)
    dlog = DecisionLog(sink_file, dropped=metrics.decision_log_dropped)
    server = HttpAuthzServer(engine, dlog, source_header=SOURCE_HEADER)
    rows: list[dict[str, Any]] = []
    wanted = names or list(DEFAULT)
    try:
        for sc in scenarios(fx):
            if sc.name not in wanted:
                continue
            raw = envoy_request(sc)
            ours, theirs = socket.socketpair()
            loop = asyncio.get_running_loop()
            server_side, _ = await loop.connect_accepted_socket(
                lambda: _Connection(server), ours)
            client_side, client = await loop.create_connection(
                partial(_Client, raw), sock=theirs)
            await client.run(max(200, iterations // 10))  # warm
            results = []
            batch = max(1, iterations // 7)
            for _ in range(7):
                start = time.process_time()
                await client.run(batch)
                results.append((time.process_time() - start) / batch * 1e6)
            results.sort()
            # the least disturbed batch: on a shared machine other processes only ever add
            row: dict[str, Any] = {"scenario": sc.name, "us_per_check": round(results[0], 1),
                                   "median": round(results[3], 1)}
            if profile:
                prof = cProfile.Profile()
                prof.enable()
                await client.run(iterations)
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
                row["profile"] = text.getvalue()
            client_side.close()
            server_side.close()
            rows.append(row)
    finally:
        await snapshot.close()
        dlog.close()
        sink_file.close()
    return rows


def run(work: Path, iterations: int, names: list[str] | None, profile: bool,
        event_loop: str = "asyncio") -> int:
    """Print the table (and profiles); ``event_loop``: as ``serve --event-loop``."""
    from extauthz import eventloop

    rows = eventloop.run(measure(work, iterations, names, profile),
                         eventloop.loop_factory(event_loop))
    print("HTTP transport, in process: data_received -> answer written "
          "(µs of CPU per check, every thread: fastest and median of 7 batches)")
    for row in rows:
        print(f"  {row['scenario']:<16} {row['us_per_check']:7.1f} {row['median']:7.1f}")
    for row in rows:
        if "profile" in row:
            print(f"\n--- cProfile: {row['scenario']} ---\n{row['profile']}")
    return 0
