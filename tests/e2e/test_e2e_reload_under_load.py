"""Hot reload under steady load through the real Envoy: zero errors, zero wrong decisions.

extauthz reads its configuration from a directory laid out like a Kubernetes ConfigMap mount
(``extauthz.yaml -> ..data/extauthz.yaml``), polled every :data:`WATCH` seconds. While
:data:`CLIENTS` client threads send a steady mix of requests through Envoy, the test rewrites the
configuration :data:`RELOADS` times, alternating an invalid configuration (a YAML syntax error, or
a route naming an unknown authenticator) and a valid one (generation A or B, in turn), half of
the updates as the kubelet does them (a new ``..2030_...`` directory and a ``..data`` symlink
renamed over the old one) and half as in-place writes.

The two valid generations decide every request identically except the *marker* route:

==============================  ==============================  ===============================
request                          generation A                    generation B
==============================  ==============================  ===============================
``/stable/`` + valid API key     200                             200
``/stable/`` without a key       401 ``missing_credential``      401 ``missing_credential``
``/stable/`` + wrong key         401 ``invalid_api_key``         401 ``invalid_api_key``
``/marker/`` without a key       200 (public)                    401 ``missing_credential``
==============================  ==============================  ===============================

A generation is *live* from the moment its file was written until a probe first saw the next
valid generation's marker decision; every request must have the decision of a generation live at
some instant between its start and its end. Invalid configurations are never live: each must be
refused (``extauthz_config_reload_total{result="failure"}`` grows) while the previous generation
keeps answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.config.loader import load_config
from extauthz.demo.background import BackgroundApp
from extauthz.keys import hash_api_key
from tests.support.load import ConfigMapDir, LoadLoop, Request, Sample, metric, start_stack_with
from tests.support.processes import Stack

API_KEY = "eak_reload-under-load-key-0123456789abcdef"
WATCH = 0.2  # --watch-interval (the debounce after a change is 0.5 s)
CLIENTS = 4
RELOADS = 20
EFFECT_BOUND = 3.0  # seconds from the write to the first request decided by the new rules
CONFIG = "extauthz.yaml"

#: what each request kind must get, per valid generation
EXPECTED: dict[str, dict[str, str]] = {
    "stable-key": {"A": "200", "B": "200"},
    "stable-nokey": {"A": "401:missing_credential", "B": "401:missing_credential"},
    "stable-badkey": {"A": "401:invalid_api_key", "B": "401:invalid_api_key"},
    "marker": {"A": "200", "B": "401:missing_credential"},
}


def config_text(generation: str, serial: int) -> str:
    """Valid generation ``A`` or ``B`` (``serial`` makes every write's bytes differ)."""
    marker: dict[str, Any] = {"name": "marker", "match": {"prefix": "/marker/"}}
    if generation == "A":
        marker["public"] = True
    else:
        marker["authn"] = ["keys"]
    data = {
        "version": 1,
        "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
        "consumers": [{"name": "loader", "keys": [{"id": "k1", "hash": hash_api_key(API_KEY)}]}],
        "routes": [
            {"name": "stable", "match": {"prefix": "/stable/"}, "authn": ["keys"]},
            marker,
        ],
    }
    return f"# generation {generation}, write {serial}\n" + yaml.safe_dump(data, sort_keys=False)


def invalid_text(serial: int) -> str:
    """A configuration extauthz must refuse: alternately not YAML, and an unknown reference."""
    if serial % 4 == 1:
        return f"# write {serial}\nroutes: [ {{name: broken\n"
    data = yaml.safe_load(config_text("B", serial))
    data["routes"][0]["authn"] = ["no-such-authenticator"]
    return f"# write {serial}\n" + yaml.safe_dump(data, sort_keys=False)


def make_request(client: int, seq: int) -> Request:
    kind = ("stable-key", "marker", "stable-nokey", "marker", "stable-badkey")[(client + seq) % 5]
    if kind == "stable-key":
        return Request(kind, f"/stable/c{client}", (("x-api-key", API_KEY),))
    if kind == "stable-badkey":
        return Request(kind, f"/stable/c{client}", (("x-api-key", API_KEY[:-4] + "0000"),))
    if kind == "stable-nokey":
        return Request(kind, f"/stable/c{client}")
    return Request(kind, f"/marker/c{client}")


@dataclass
class Live:
    """A valid generation and when it may have been serving (monotonic seconds)."""

    generation: str
    since: float
    until: float = float("inf")


@pytest.fixture(scope="module")
def mount(e2e_dir: Path) -> ConfigMapDir:
    return ConfigMapDir(e2e_dir / "configmap", {CONFIG: config_text("A", 0)})


@pytest.fixture(scope="module")
def stack(mount: ConfigMapDir, echo: BackgroundApp, e2e_dir: Path) -> Iterator[Stack]:
    running = start_stack_with(
        mount.path(CONFIG), echo_port=echo.port, log_dir=e2e_dir / "logs",
        extra_args=["--watch-interval", str(WATCH), "--no-decision-log"],
    )  # fmt: skip
    try:
        yield running
    finally:
        running.stop()


def reloads(stack: Stack, result: str) -> float:
    return metric(stack.metrics(), "extauthz_config_reload_total", {"result": result})


def grew(stack: Stack, result: str, before: float) -> Callable[[], bool]:
    return lambda: reloads(stack, result) > before


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate`` every 20 ms; return the seconds waited; fail after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def marker_outcome(stack: Stack) -> tuple[str, float]:
    """The marker route's outcome now, and when the answer arrived (monotonic)."""
    r = stack.get("/marker/probe")
    outcome = f"{r.status}:{r.reason}" if r.status != 200 else "200"
    return outcome, time.monotonic()


def wrong_decisions(samples: list[Sample], timeline: list[Live]) -> list[str]:
    wrong = []
    for s in samples:
        possible = {
            EXPECTED[s.kind][g.generation]
            for g in timeline
            if g.since <= s.end and g.until >= s.start
        }
        if s.outcome not in possible:
            wrong.append(f"{s.kind} got {s.outcome}, expected one of {sorted(possible)} "
                         f"({s.start:.3f}..{s.end:.3f})")  # fmt: skip
    return wrong


def test_reloads_under_load_lose_nothing_and_decide_right(
    stack: Stack, mount: ConfigMapDir, record_property: Callable[[str, object], None]
) -> None:
    assert marker_outcome(stack)[0] == EXPECTED["marker"]["A"]
    success0, failure0 = reloads(stack, "success"), reloads(stack, "failure")
    timeline = [Live("A", float("-inf"))]
    current = "A"
    effects: list[float] = []
    refusals: list[float] = []
    windows: list[tuple[float, float]] = []
    with LoadLoop(stack.ports.listener, make_request, clients=CLIENTS, max_seconds=90) as load:
        time.sleep(0.5)  # steady state first
        for serial in range(1, RELOADS + 1):
            valid = serial % 2 == 0
            new = ("B" if current == "A" else "A") if valid else current
            text = config_text(new, serial) if valid else invalid_text(serial)
            before_ok, before_failed = reloads(stack, "success"), reloads(stack, "failure")
            written = time.monotonic()
            if serial % 4 in (0, 1):
                mount.swap({CONFIG: text})
            else:
                mount.write_in_place(CONFIG, text)
            if valid:
                timeline.append(Live(new, written))
                want = EXPECTED["marker"][new]
                seen_at = 0.0

                def switched() -> bool:
                    nonlocal seen_at
                    outcome, seen_at = marker_outcome(stack)
                    return outcome == want

                wait_until(f"write {serial}: generation {new} in effect", switched, 10)
                effects.append(seen_at - written)
                timeline[-2].until = seen_at
                wait_until(f"write {serial}: success counted", grew(stack, "success", before_ok), 5)
                current = new
            else:
                refusals.append(wait_until(
                    f"write {serial}: refusal counted", grew(stack, "failure", before_failed), 10
                ))  # fmt: skip
                # The refused write changed nothing: the previous generation still answers.
                assert marker_outcome(stack)[0] == EXPECTED["marker"][current]
                assert reloads(stack, "success") == before_ok
            windows.append((written, time.monotonic()))
        time.sleep(0.3)
    result = load.result

    record_property("requests", result.requests)
    record_property("effect_max_seconds", round(max(effects), 3))
    print(f"\nreload under load: {result.requests} requests in {result.seconds:.1f}s "
          f"({result.rate:.0f}/s, {CLIENTS} clients), {RELOADS} writes; new rules in effect "
          f"after max {max(effects):.3f}s (mean {sum(effects) / len(effects):.3f}s); refusals "
          f"counted after max {max(refusals):.3f}s; outcomes {dict(result.outcomes)}")  # fmt: skip

    # Zero transport errors, zero 5xx.
    assert result.errors == [], result.errors[:5]
    # Zero wrong decisions.
    wrong = wrong_decisions(result.samples, timeline)
    assert wrong == [], f"{len(wrong)} wrong decisions: {wrong[:10]}"
    # Every write happened under load (requests completed inside each write's window), and
    # every kind of request was exercised throughout.
    for start, end in windows:
        assert any(start <= s.start and s.end <= end for s in result.samples), (start, end)
    assert {kind for kind, _ in result.outcomes} == set(EXPECTED)
    assert result.requests > 500, result.requests
    # Both generations' marker decisions were actually seen by the load, not only by the probe.
    assert result.outcomes[("marker", "200")] > 0
    assert result.outcomes[("marker", "401:missing_credential")] > 0
    # The new rules took effect within the bound; every refusal and every success was counted.
    assert max(effects) < EFFECT_BOUND, effects
    assert reloads(stack, "failure") >= failure0 + RELOADS // 2
    assert reloads(stack, "success") >= success0 + RELOADS // 2


def test_metrics_name_the_serving_configuration(stack: Stack, mount: ConfigMapDir) -> None:
    """After the churn (the last write was valid): the info metric names exactly the digest of
    the file on disk, and the last-success timestamp is recent."""
    text = stack.metrics()
    infos = [line for line in text.splitlines() if line.startswith("extauthz_config_info{")]
    assert infos == [
        f'extauthz_config_info{{sha256="{load_config(mount.path(CONFIG)).digest}"}} 1.0'
    ]
    last = metric(text, "extauthz_config_last_success_timestamp_seconds")
    assert 0 < time.time() - last < 60
