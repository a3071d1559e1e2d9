"""Where the CPU of one check goes (``scripts/bench profile``): py-spy on extauthz under load.

For each scenario (default: JWT RS256 warm and API key), Envoy + one ``extauthz serve`` are
loaded with wrk (10 connections) while ``py-spy record --native`` samples the extauthz process
(every thread). Each sample's stack is put in one bucket, first match from the leaf's side up:

``ours``        a frame of the extauthz package (not its generated ``_proto``)
``protobuf``    protobuf's runtime or generated messages
``prometheus``  prometheus_client (metrics)
``decisionlog`` the decision log writer thread (JSON + write)
``httptools``   the HTTP/1.1 parser of the HTTP transport (``--transport http``)
``grpc``        grpcio: the Cython core (``cygrpc``), ``grpc/aio``, the C core (``grpc_core``...)
``asyncio``     the event loop itself (selectors, ``_run_once``, tasks/futures)
``syscalls``    socket and epoll system calls (``send``, ``recv``, ``epoll_wait``; uvloop's
                ``write``, ``read``, ``epoll_pwait``), kernel included
``other``

and the share of each bucket times the measured CPU per check (``/proc``, same run) gives
microseconds per check per bucket. Samples of a thread that is *waiting* (for a lock, the GIL, a
timer, or for events in ``epoll_wait``) are not CPU and are left out (:func:`idle`): with
``--native`` py-spy records every thread all the time, and the decision log's and the log
handler's threads, asleep nearly always, would otherwise be a third of the samples. py-spy
samples wall-clock time: on a busy machine a thread preempted inside a system call (``send``)
is still counted there. The raw collapsed stacks (``*.folded``) are kept for anyone who wants to
look closer. py-spy comes from PyPI (installed into .venv when missing); it needs ptrace rights
(root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

BUCKETS = ("ours", "protobuf", "prometheus", "decisionlog", "httptools", "grpc", "asyncio",
           "syscalls", "other")
#: the C functions of the socket and selector system calls (the kernel's work is in them)
_SYSCALLS = ("sock_send", "sock_recv", "sock_call", "select_epoll_poll", "getpid",
             # uvloop's (libuv): the socket write and read, the poll
             "UVStream__try_write", "uv__read", "uv__write")


#: our entry points: on every stack of the main thread, so they say nothing about the cost
_ENTRY = ("extauthz/__main__.py", "extauthz/cli.py", "extauthz/server.py",
          "extauthz/eventloop.py")
#: the transports: a stage label is the first of our frames below these
_TRANSPORT = ("extauthz/servicer.py", "extauthz/http_authz.py", "extauthz/eager.py",
              "extauthz/grpcfront/")


def _ours(frame: str) -> bool:
    """A frame of the extauthz package (py-spy prints paths relative to sys.path entries)."""
    return (("(extauthz/" in frame or "/extauthz/" in frame) and "_proto" not in frame
            and not any(e in frame for e in _ENTRY))


#: leaf frames of a thread that waits rather than runs
_WAITING = ("PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait",
            "clock_nanosleep", "sem_wait", "sem_timedwait", "__futex", "futex_wait")


def idle(stack: str) -> bool:
    """A sample of a waiting thread: its innermost frames are a wait (a lock, the GIL, a sleep,
    ``epoll_wait`` under the event loop's select), not work."""
    frames = stack.split(";")
    inner = ";".join(frames[-4:])
    if any(w in inner for w in _WAITING):
        return True
    leaf = frames[-1]
    return ((leaf.startswith("epoll_wait") and "select_epoll_poll" in inner)
            or (leaf.startswith("epoll_pwait") and "uv__io_poll" in inner))  # uvloop's


def classify(stack: str) -> str:
    """The bucket of one collapsed stack (``frame;frame;...`` root first)."""
    frames = stack.split(";")
    if any("decisionlog.py" in f and "_run" in f for f in frames):
        return "decisionlog"
    if any(c in f for f in frames[-4:] for c in _SYSCALLS):
        return "syscalls"
    for frame in reversed(frames):  # leaf first
        if "prometheus_client" in frame:
            return "prometheus"
        if "httptools" in frame or "llhttp" in frame:
            return "httptools"
        if "google/protobuf" in frame or "extauthz/_proto" in frame or "upb" in frame.lower():
            return "protobuf"
        if _ours(frame):
            return "ours"
    joined = stack.lower()
    if "grpc" in joined or "cygrpc" in joined:
        return "grpc"
    if any(n in joined for n in ("asyncio", "selectors", "uvloop", "uv_run", "(loop.c:")):
        return "asyncio"
    return "other"


def ours_breakdown(stacks: Counter[str]) -> Counter[str]:
    """For samples in our code: the outermost extauthz function below the transport (which
    stage: view, engine/authn, wire, metrics...)."""
    out: Counter[str] = Counter()
    for stack, n in stacks.items():
        if classify(stack) not in ("ours", "protobuf", "prometheus"):
            continue
        frames = [f for f in stack.split(";") if _ours(f)]
        inner = [f for f in frames if not any(t in f for t in _TRANSPORT)]
        label = inner[0] if inner else frames[-1] if frames else "(protobuf/metrics outside)"
        name, _, where = label.partition(" (")
        out[f"{name} {where.split(':')[0]}" if where else label] += n
    return out


def parse_folded(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("py-spy")
    if found:
        return found
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
                          check=False)
    return str(candidate) if done.returncode == 0 and candidate.exists() else None


def main(args: argparse.Namespace) -> int:
    from bench import fixtures, runner, tools
    from bench.runner import output_dir

    out = output_dir(args.out, "profile-")
    found = tools.locate()
    spy = py_spy()
    if found.wrk is None or found.envoy is None or spy is None:
        print("bench: need wrk, Envoy and py-spy (pip install py-spy). "
              + found.missing_message(), file=sys.stderr)
        return 3
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    fx = fixtures.build(work, new_tokens=10)
    by_name = {s.name: s for s in runner.scenarios(fx)}
    opts = runner.Options.for_mode("quick", out, duration_s=args.duration, warmup_s=1.0)
    summary: dict[str, Any] = {}
    with runner.running_stack(found, runner.scratch_dir(out), opts, fx.config,
                              args.transport) as stack:
        pid = stack.extauthz_pids[0]
        for name in args.scenarios.split(","):
            sc = by_name[name]
            folded = out / f"{name}.folded"
            rec = subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--native", "--rate", "250",
                 "--duration", str(int(args.duration) + 3), "--format", "raw",
                 "--output", str(folded)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            timer = threading.Timer(args.duration + 60, rec.kill)
            timer.start()
            try:
                row = runner.measure_wrk(stack, found, sc, 10, opts)
            finally:
                rec.wait()
                timer.cancel()
            if not folded.exists():
                print(f"py-spy failed: {rec.stderr.read() if rec.stderr else ''}",
                      file=sys.stderr)
                return 1
            stacks = parse_folded(folded)
            waiting = sum(n for st, n in stacks.items() if idle(st))
            stacks = Counter({st: n for st, n in stacks.items() if not idle(st)})
            total = sum(stacks.values()) or 1
            buckets: Counter[str] = Counter()
            for stack_line, n in stacks.items():
                buckets[classify(stack_line)] += n
            cpu = row["extauthz_cpu_us_per_check"]
            summary[name] = {
                "rps": row["rps"], "cpu_us_per_check": cpu, "samples": total,
                "waiting_samples_left_out": waiting,
                "buckets": {b: {"share": round(buckets[b] / total, 3),
                                "us_per_check": round(buckets[b] / total * cpu, 1)}
                            for b in BUCKETS},
                "ours_top": [(k, round(v / total * cpu, 1))
                             for k, v in ours_breakdown(stacks).most_common(12)],
            }
            print(f"{name}: {row['rps']:.0f} req/s, {cpu:.0f} us CPU/check, {total} samples")
            for b in BUCKETS:
                s = summary[name]["buckets"][b]
                print(f"  {b:<12} {s['share']:6.1%}  {s['us_per_check']:7.1f} us/check")
            print("  our code by function (us/check):")
            for k, v in summary[name]["ours_top"]:
                print(f"    {v:7.1f}  {k}")
    (out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bench: wrote {out / 'profile.json'} and *.folded stacks in {out}")
    return 0
