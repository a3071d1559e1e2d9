#!/usr/bin/env python3
"""Load time and memory of many API keys: the streamed keys file against keys in the YAML.

Writes ``--keys`` distinct keys (10 consumers, one scope each) once as a JSON Lines
``api_key.keys_file`` and once as ``consumers:`` in the configuration, then for each layout:

* ``in-process``: a fresh Python process (this script re-run with ``--child``) that imports
  extauthz, then times ``load_snapshot`` (read, validate, build the authenticator) and reports
  its RSS after the load (VmRSS) and its peak (VmHWM), with the RSS before the load;
* ``serve``: a real ``extauthz serve`` on loopback ports, timed from the start of the process to
  ``/readyz`` answering 200 (interpreter start and imports included), and its RSS once ready.

    .venv/bin/python scripts/measure_apikeys.py --keys 100000

Numbers: docs/memory.md. The machine it runs on may be shared: times are noisy, compare within
one run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok

ROUTES = """
routes:
- {name: all, match: {prefix: /}, authn: [keys]}
"""


def status_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    return out


def write_layouts(base: Path, count: int) -> dict[str, Path]:
    """The same keys as a keys file and as YAML consumers; returns config path per layout."""
    consumers: dict[str, list[str]] = {}
    with (base / "keys.jsonl").open("w") as lines:
        for i in range(count):
            digest = "sha256:" + hashlib.sha256(f"eak_measure-{i:09d}".encode()).hexdigest()
            consumer = f"tenant-{i % 10}"
            lines.write(json.dumps({"consumer": consumer, "id": f"k{i}", "hash": digest,
                                    "scopes": ["reports:read"]}) + "\n")
            consumers.setdefault(consumer, []).append(
                f'  - {{id: k{i}, hash: "{digest}", scopes: [reports:read]}}\n')
    streamed = base / "streamed.yaml"
    streamed.write_text("authenticators:\n  keys: {api_key: {keys_file: keys.jsonl}}\n"
                        + ROUTES)
    whole = base / "whole.yaml"
    with whole.open("w") as out:
        out.write("authenticators:\n  keys: {api_key: {}}\n" + ROUTES + "consumers:\n")
        for name, keys in consumers.items():
            out.write(f"- name: {name}\n  keys:\n")
            out.writelines(keys)
    return {"keys_file (streamed)": streamed, "consumers: in the YAML": whole}


def child(config: str) -> None:
    """Runs in a fresh process: time the load, print a JSON line."""
    from extauthz.metrics import Metrics
    from extauthz.snapshot import load_snapshot

    gc.collect()
    before = status_mib()["VmRSS"]
    started = time.perf_counter()
    snapshot = load_snapshot(config, Metrics())
    seconds = time.perf_counter() - started
    gc.collect()
    after = status_mib()
    assert snapshot.authenticators
    print(json.dumps({"seconds": seconds, "rss_before": before, "rss": after["VmRSS"],
                      "peak": after["VmHWM"]}))


def in_process(config: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(config)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def serve(config: Path, logs: Path) -> dict[str, float]:
    grpc_port, http_port = free_ports(2)
    argv = extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{http_port}",
                         log_level="WARNING")
    started = time.monotonic()
    process = ManagedProcess("extauthz", argv, logs / f"{config.stem}.log").start()
    try:
        process.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), timeout=120,
                           interval=0.02)
        ready = time.monotonic() - started
        time.sleep(1)
        assert process.pid is not None
        return {"ready_seconds": ready, **status_mib(process.pid)}
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="measure-apikeys-") as tmp:
        base = Path(tmp)
        layouts = write_layouts(base, args.keys)
        print(f"# {args.keys} keys, 10 consumers; keys.jsonl "
              f"{(base / 'keys.jsonl').stat().st_size / 2**20:.1f} MiB, whole.yaml "
              f"{(base / 'whole.yaml').stat().st_size / 2**20:.1f} MiB")
        print("| layout | load (s) | RSS before load (MiB) | RSS after (MiB) | peak (MiB) "
              "| serve: start to ready (s) | serve: RSS ready (MiB) |")
        print("|---|---|---|---|---|---|---|")
        for name, config in layouts.items():
            one = in_process(config)
            served = serve(config, base)
            print(f"| {name} | {one['seconds']:.2f} | {one['rss_before']:.1f} | "
                  f"{one['rss']:.1f} | {one['peak']:.1f} | {served['ready_seconds']:.2f} | "
                  f"{served['VmRSS']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
