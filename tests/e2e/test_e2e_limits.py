"""settings.limits through the real Envoy: client -> Envoy (with_request_body) -> extauthz.

Envoy runs ``deploy/envoy/envoy-body.yaml`` (``with_request_body: {max_request_bytes: 8192,
allow_partial_message: true}``; its own header limit is the default ``max_request_headers_kb: 60``)
on two listeners, ``main`` (headers map) and ``raw`` (``encode_raw_headers: true``). extauthz runs
with small limits so each can be crossed while Envoy's own are not:

    max_header_bytes 8192   max_headers 40   max_token_bytes 256   max_body_bytes 1024

Every deny asserts the HTTP status the client got and the reason extauthz gave in the
problem+json body (Envoy passes the denied_response through: the reason is extauthz's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.keys import hash_api_key
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.envoy_body import MAX_REQUEST_BYTES, BodyStack, body_route, start_env_stack
from tests.support.processes import write_config

KEY = "eak_e2e-limits-key-0123456789abcdef"
LIMITS = {"max_header_bytes": 8192, "max_headers": 40, "max_token_bytes": 256,
          "max_signature_components": 4, "max_body_bytes": 1024}
#: Envoy's default max_request_headers_kb
ENVOY_HEADER_LIMIT = 60 * 1024
LISTENERS = ["main", "raw"]


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path) -> Path:
    return write_config(e2e_dir / "extauthz-limits.yaml", {
        "version": 1,
        "settings": {"limits": LIMITS},
        "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
        "consumers": [{"name": "acme", "keys": [{"id": "k1", "hash": hash_api_key(KEY)}]}],
        "routes": [
            {"name": "lim", "authn": ["keys"]},
            {"name": "open", "public": True},
        ],
    })


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[BodyStack]:
    running = start_env_stack(
        extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "logs",
        routes=[body_route("/lim/", "lim"), body_route("/open/", "open")],
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("listener", LISTENERS)
def test_within_the_limits_is_allowed(stack: BodyStack, listener: str) -> None:
    r = stack.send("POST", "/lim/x", [("x-api-key", KEY), ("x-pad", "v" * 4000)], b"b" * 1024,
                   listener=listener)
    assert upstream_headers(r)["x-auth-subject"] == "acme"


@pytest.mark.parametrize("listener", LISTENERS)
def test_headers_over_max_header_bytes_are_400(stack: BodyStack, listener: str) -> None:
    """Under Envoy's 60 KiB, over extauthz's 8 KiB: extauthz refuses, on a public route too."""
    for path in ("/open/x", "/lim/x"):
        r = stack.send("GET", path, [("x-api-key", KEY), ("x-big", "v" * 9000)],
                       listener=listener)
        assert_denied(r, 400, "request_too_large")


def test_headers_over_envoys_own_limit_never_reach_extauthz(stack: BodyStack) -> None:
    """Envoy's max_request_headers_kb (60 KiB) comes first: 431 from Envoy, no problem body."""
    r = stack.send("GET", "/open/x", [("x-big", "v" * (ENVOY_HEADER_LIMIT + 1024))])
    assert r.status == 431, (r.status, r.text[:200])
    assert r.header("content-type") != "application/problem+json"


@pytest.mark.parametrize("listener", LISTENERS)
def test_too_many_headers_is_400(stack: BodyStack, listener: str) -> None:
    many = [(f"x-h{i}", "v") for i in range(45)]
    r = stack.send("GET", "/open/x", many, listener=listener)
    assert_denied(r, 400, "too_many_headers")


@pytest.mark.parametrize("listener", LISTENERS)
def test_credential_over_max_token_bytes_is_401(stack: BodyStack, listener: str) -> None:
    r = stack.send("GET", "/lim/x", [("x-api-key", "k" * 300)], listener=listener)
    assert_denied(r, 401, "credential_too_large",
                  challenge_contains=('error="invalid_token"', "credential too large"))


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("size", [1025, MAX_REQUEST_BYTES + 5000])
def test_body_over_max_body_bytes_is_400(stack: BodyStack, listener: str, size: int) -> None:
    """Over extauthz's 1 KiB (and, the second size, over Envoy's 8 KiB buffer too: Envoy sends
    the first 8 KiB with allow_partial_message, still over extauthz's limit)."""
    r = stack.send("POST", "/open/x", [("content-type", "application/octet-stream")],
                   b"x" * size, listener=listener)
    assert_denied(r, 400, "body_too_large")


def test_default_limits_accept_whatever_a_default_envoy_accepts(
    e2e_dir: Path, echo: BackgroundApp
) -> None:
    """The default max_header_bytes (64 KiB) sits above Envoy's default 60 KiB plus the headers
    Envoy adds: the largest header block Envoy lets through is allowed, not 400."""
    config = write_config(e2e_dir / "extauthz-defaults.yaml", {
        "version": 1, "routes": [{"name": "open", "public": True}]})
    running = start_env_stack(config, echo_port=echo.port, log_dir=e2e_dir / "logs-defaults",
                              routes=[body_route("/open/", "open")])
    def block(size: int) -> list[tuple[str, str]]:
        # in 8 headers: the echo upstream refuses one header line over 8 KiB
        return [(f"x-big{i}", "v" * (size // 8 - 8)) for i in range(8)]

    try:
        size = ENVOY_HEADER_LIMIT
        r = running.send("GET", "/open/x", block(size))
        while r.status == 431 and size > ENVOY_HEADER_LIMIT - 2048:  # Envoy's own refusal
            size -= 32
            r = running.send("GET", "/open/x", block(size))
        assert r.status != 431, "Envoy refused every size tried"
        seen = upstream_headers(r)  # 200 from the upstream: extauthz did not refuse it
        assert sum(len(v) for k, v in seen.items() if k.startswith("x-big")) > 59 * 1024
    finally:
        running.stop()
