"""Load generators: wrk (HTTP/1.1 to Envoy, Lua-scripted) and h2load (gRPC to extauthz directly).

Every run is bounded in time (``-d`` / ``-D``) and by a subprocess timeout; wrk runs that rotate
through a credential file are also bounded in count (``max_requests`` per thread). Results come
back as :class:`LoadResult` (requests/s, latency percentiles in microseconds, error counts).

wrk: a generated Lua script sets the method, path, headers and body; when a header must change
per request (a pool of tokens) ``request()`` rotates through a file, each thread starting at its
own offset. ``done()`` prints one ``BENCH_JSON {...}`` line with wrk's own latency histogram
percentiles, which is what we parse (wrk's text output is not).

h2load: ``-d`` posts a pre-serialized CheckRequest (5-byte gRPC prefix included, see
:mod:`bench.grpcframe`) with ``content-type: application/grpc`` and ``te: trailers`` on one
HTTP/2 connection with ``-m`` concurrent streams — the way Envoy talks to extauthz. Percentiles
are computed from ``--log-file`` (per-request microseconds). h2load only sees the HTTP status
(gRPC's own status is in the trailers), so each direct scenario is checked once with a real gRPC
client before it is loaded.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LoadResult:
    tool: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    latency_us: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, p999, mean, max
    errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class LoadError(RuntimeError):
    """A load generator failed or printed something we cannot parse."""


def lua_string(value: str) -> str:
    """``value`` as a Lua string literal (every byte outside printable ASCII escaped)."""
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


_LUA_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,' ..
    '"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_script(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    rotate_header: str | None = None,
    rotate_prefix: str = "",
    rotate_file: Path | None = None,
    max_requests_per_thread: int = 0,
    threads: int = 1,
) -> str:
    """The Lua script for one scenario (``threads``: wrk's ``-t``; thread ``k`` of ``T`` sends
    the rotating values ``k, k+T, k+2T, ...`` so the threads do not send the same ones)."""
    lines = [f"wrk.method = {lua_string(method)}", f"wrk.path = {lua_string(path)}"]
    for name, value in headers.items():
        # wrk adds its own "Host: <url host>" unless wrk.headers["Host"] (that exact spelling)
        # is set: a lowercase "host" would send two, and Envoy would see another authority
        # (an HMAC signature covering @authority then fails)
        key = "Host" if name.lower() == "host" else name
        lines.append(f"wrk.headers[{lua_string(key)}] = {lua_string(value)}")
    if body:
        lines.append(f"wrk.body = {lua_string(body.decode('latin-1'))}")
    lines.append("local threads = 0")
    lines.append("function setup(thread) thread:set('tid', threads); threads = threads + 1 end")
    if rotate_header and rotate_file:
        lines.append(f"""
local values = {{}}
local n = 0
local sent = 0
local limit = {int(max_requests_per_thread)}
local step = {max(1, int(threads))}
function init(args)
  for line in io.lines({lua_string(str(rotate_file))}) do values[#values + 1] = line end
  n = (tid or 0) + 1 - step
end
function request()
  sent = sent + 1
  if limit > 0 and sent > limit then wrk.thread:stop() end
  n = n + step
  if n > #values then n = n - #values end
  wrk.headers[{lua_string(rotate_header)}] = {lua_string(rotate_prefix)} .. values[n]
  return wrk.format()
end""")
    lines.append(_LUA_DONE)
    return "\n".join(lines) + "\n"


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int | None = None,
    timeout_s: float = 5.0,
) -> LoadResult:
    threads = threads or max(1, min(2, connections))
    # wrk takes whole seconds only
    seconds = max(1, round(duration_s))
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", f"{max(1, round(timeout_s))}s", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    match = re.search(r"^BENCH_JSON (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or match is None:
        raise LoadError(f"wrk failed (exit {proc.returncode}): {proc.stdout[-800:]}"
                        f"{proc.stderr[-800:]}")
    data = json.loads(match.group(1))
    duration = data["duration_us"] / 1e6
    lat = {k: float(v) for k, v in data["latency_us"].items()}
    errors = {k: int(v) for k, v in data["errors"].items()}
    return LoadResult(
        tool="wrk", connections=connections, duration_s=duration, requests=data["requests"],
        rps=data["requests"] / duration if duration else 0.0, latency_us=lat,
        errors=errors, non_2xx=errors.get("status", 0),
    )


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def run_h2load(
    h2load: str,
    url: str,
    body: Path,
    *,
    streams: int,
    duration_s: float,
    warmup_s: float,
    log_file: Path,
    connections: int = 1,
) -> LoadResult:
    argv = [h2load, "-t", "1", "-c", str(connections), "-m", str(streams),
            # h2load reads a bare number as whole seconds ("0.5" is an error): give milliseconds
            "-D", f"{round(duration_s * 1000)}ms", "--warm-up-time", f"{round(warmup_s * 1000)}ms",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--log-file", str(log_file), url]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=duration_s + warmup_s + 60, check=False)
    out = proc.stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if proc.returncode != 0 or done is None or finished is None:
        raise LoadError(f"h2load failed (exit {proc.returncode}): {out[-800:]}"
                        f"{proc.stderr[-800:]}")
    status2 = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    latencies: list[float] = []
    failed = 0
    for row in log_file.read_text().splitlines():
        parts = row.split("\t")
        if len(parts) >= 3:
            if parts[1] != "200":
                failed += 1
            latencies.append(float(parts[2]))
    latencies.sort()
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    lat = {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
           "p99": percentile(latencies, 99), "p999": percentile(latencies, 99.9),
           "mean": sum(latencies) / len(latencies) if latencies else math.nan,
           "max": latencies[-1] if latencies else math.nan}
    non2xx = sum(int(status2.group(i)) for i in (2, 3, 4)) if status2 else failed
    return LoadResult(
        tool="h2load", connections=streams, duration_s=seconds, requests=int(done.group(4)),
        rps=float(finished.group(3)), latency_us=lat,
        errors={"failed": int(done.group(5)), "errored": int(done.group(6)),
                "timeout": int(done.group(7))},
        non_2xx=non2xx,
    )
