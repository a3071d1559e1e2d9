"""Assertions shared by the end-to-end tests (responses as the client behind Envoy sees them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

from extauthz.demo.httpclient import Response
from tests.support.processes import Stack

PROBLEM_JSON = "application/problem+json"


def assert_denied(
    response: Response,
    status: int,
    reason: str,
    *,
    challenge: str | None = None,
    challenge_contains: tuple[str, ...] = (),
) -> None:
    """The client got ``status`` with a problem+json body whose ``reason`` is ``reason``.

    ``challenge``: one WWW-Authenticate value must equal it exactly; ``challenge_contains``:
    one value must contain all of these fragments.
    """
    detail = f"{response.status} {response.headers} {response.text[:300]}"
    assert response.status == status, detail
    assert response.header("content-type") == PROBLEM_JSON, detail
    problem = response.problem()
    assert problem.get("reason") == reason, detail
    assert problem.get("status") == status, detail
    challenges = response.header_values("www-authenticate")
    if challenge is not None:
        assert challenge in challenges, detail
    if challenge_contains:
        assert any(all(part in c for part in challenge_contains) for c in challenges), detail


def upstream_headers(response: Response) -> Mapping[str, str]:
    """The request headers the echo upstream received (the response must be a 200 from it)."""
    assert response.status == 200, f"{response.status} {response.text[:300]}"
    body = response.json()
    assert body["upstream"] == "echo"
    headers: Mapping[str, str] = body["headers"]
    return headers


def wait_for_status(
    stack: Stack,
    path: str,
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    status: int,
    timeout: float,
    interval: float = 0.1,
) -> tuple[Response, float]:
    """Poll ``GET path`` until it answers ``status``; return the response and seconds waited.

    ``headers`` may be a callable (e.g. minting a fresh token per attempt)."""
    start = time.monotonic()
    while True:
        hdrs = headers() if callable(headers) else headers
        response = stack.get(path, hdrs)
        waited = time.monotonic() - start
        if response.status == status:
            return response, waited
        if waited > timeout:
            raise AssertionError(
                f"GET {path}: still {response.status} after {timeout}s, wanted {status}: "
                f"{response.text[:300]}"
            )
        time.sleep(interval)


@dataclass(frozen=True)
class H2Response:
    """What an HTTP/2 (h2c, prior knowledge) request got: a status, or a reset stream."""

    status: int | None
    reset: bool
    body: str

    @property
    def reason(self) -> str | None:
        """The problem body's ``reason`` (extauthz's Reason code), if any."""
        found = re.search(r'"reason":\s*"([a-z_]+)"', self.body)
        return found.group(1) if found else None


def h2_request(url: str, headers: Mapping[str, str] | None = None,
               timeout: float = 10.0) -> H2Response:
    """One GET over cleartext HTTP/2 with ``nghttp`` (Debian nghttp2-client, installed by
    scripts/bootstrap). Unlike an HTTP/1.1 client it can send pseudo-headers of its choice
    (``:scheme: https`` on a plaintext connection)."""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        pytest.skip("nghttp not installed (apt-get install nghttp2-client; scripts/bootstrap)")
    argv = [nghttp, "-v", "--no-dep", url]
    for name, value in (headers or {}).items():
        argv[2:2] = ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    status = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", out.stdout)
    return H2Response(status=int(status.group(1)) if status else None,
                      reset="recv RST_STREAM frame" in out.stdout, body=out.stdout)
