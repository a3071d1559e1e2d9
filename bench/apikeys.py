"""100 000 API keys: load time and memory, from ``scripts/measure_apikeys.py`` (issue 16).

The benchmark runs the measuring script the memory work ships (when the checked-out extauthz has
it) and reads its Markdown table: per layout (the streamed JSON Lines ``keys_file``, and the
same keys as ``consumers:`` in the YAML), the in-process load time and RSS after the load and at
its peak, and a real ``extauthz serve``'s time from start to ``/readyz`` and its RSS once ready.
The run's report carries the table and the targets read from it (load ≤ 3 s, RSS ≤ 150 MiB for
the streamed layout).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "measure_apikeys.py"
#: the table's columns, in order, as JSON keys
COLUMNS = ("layout", "load_s", "rss_before_mib", "rss_after_mib", "peak_mib", "ready_s",
           "rss_ready_mib")


def available() -> bool:
    return SCRIPT.exists()


def parse(text: str) -> list[dict[str, Any]]:
    """The rows of the script's Markdown table (header and separator lines skipped)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(COLUMNS) or cells[0] in ("layout", "---"):
            continue
        try:
            values: list[Any] = [cells[0], *(float(c) for c in cells[1:])]
        except ValueError:
            continue
        rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


def measure(keys: int = 100_000, timeout_s: float = 900) -> tuple[list[dict[str, Any]], str]:
    """Run the script; (rows, its heading line). Raises RuntimeError when it fails."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--keys", str(keys)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measure_apikeys.py exited {proc.returncode}: {proc.stderr[-500:]}")
    heading = next((line for line in proc.stdout.splitlines() if line.startswith("#")), "")
    return parse(proc.stdout), heading.lstrip("# ").strip()
