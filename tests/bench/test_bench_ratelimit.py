"""Smoke of ``python -m bench.ratelimit``: it runs and reports every configuration (no speed is
asserted: a benchmark, not a timed test)."""

from __future__ import annotations

from bench.ratelimit import CASES, run


def test_the_ratelimit_bench_reports_every_configuration() -> None:
    lines: list[str] = []
    run(iterations=250, redis_iterations=50, out=lines.append)
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == list(CASES)
    assert rows["none"][1] == "1.00" and rows["none"][3] == "1.00"
    assert all(float(value) > 0 for row in rows.values() for value in row)
