"""The benchmark reads scripts/measure_apikeys.py's table (issue 16: 100 000 API keys)."""

from __future__ import annotations

from bench import apikeys, report

OUTPUT = """# 100000 keys, 10 consumers; keys.jsonl 13.2 MiB, whole.yaml 15.0 MiB
| layout | load (s) | RSS before load (MiB) | RSS after (MiB) | peak (MiB) | serve: start to ready (s) | serve: RSS ready (MiB) |
|---|---|---|---|---|---|---|
| keys_file (streamed) | 1.52 | 70.1 | 112.3 | 118.0 | 2.41 | 115.2 |
| consumers: in the YAML | 8.10 | 70.0 | 390.5 | 530.2 | 9.90 | 400.1 |
"""  # noqa: E501


def test_the_table_is_read_row_by_row() -> None:
    rows = apikeys.parse(OUTPUT)
    assert [r["layout"] for r in rows] == ["keys_file (streamed)", "consumers: in the YAML"]
    assert rows[0]["load_s"] == 1.52 and rows[0]["rss_ready_mib"] == 115.2


def test_the_targets_come_from_the_streamed_layout() -> None:
    doc = {"e2e": [], "sweep": [], "api_keys_memory": {
        "keys": 100_000, "heading": "100000 keys", "rows": apikeys.parse(OUTPUT)}}
    found = {t["target"]: t for t in report.targets(doc)}
    load = found["100000 API keys (keys_file (streamed)) load ≤ 3 s (in process)"]
    rss = found["100000 API keys (keys_file (streamed)) hold ≤ 150 MiB (serve: RSS once ready)"]
    assert (load["value"], load["met"]) == (1.52, True)
    assert (rss["value"], rss["met"]) == (115.2, True)
    assert "keys_file (streamed) | 1.52" in report.api_keys_table(doc)
