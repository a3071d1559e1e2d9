"""Assertions shared by the end-to-end tests (responses as the client behind Envoy sees them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

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
