"""``python -m extauthz.demo --self-check``: the demo starts, answers as documented, and stops.

The demo uses fixed ports (18080/18081/9001/9090/10000/19901); if any is taken (a demo left
running on this machine), the test is skipped rather than failed: that is not a product bug.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extauthz.demo.main import DemoPorts
from extauthz.demo.procs import port_in_use

REPO = Path(__file__).resolve().parents[2]


def test_demo_self_check_passes(tmp_path: Path) -> None:
    taken = [f"{name} {port}" for name, port in DemoPorts().named().items() if port_in_use(port)]
    if taken:
        pytest.skip(f"demo ports in use: {', '.join(taken)}")
    result = subprocess.run(
        [sys.executable, "-m", "extauthz.demo", "--self-check", "--log-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "self-check passed" in result.stdout
    assert "FAIL" not in result.stdout
    # Everything it started is stopped again.
    still = [f"{name} {port}" for name, port in DemoPorts().named().items() if port_in_use(port)]
    assert not still, still


def test_demo_refuses_to_start_when_a_port_is_taken(tmp_path: Path) -> None:
    import socket

    ports = DemoPorts()
    if port_in_use(ports.admin):
        pytest.skip("Envoy admin demo port already in use")
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be TIME_WAIT
        blocker.bind(("127.0.0.1", ports.admin))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "extauthz.demo", "--self-check", "--log-dir", str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Envoy admin 127.0.0.1:{ports.admin}" in result.stderr
    assert "already in use" in result.stderr
