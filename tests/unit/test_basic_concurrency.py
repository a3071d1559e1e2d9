"""Basic brute-force budget under real concurrency (issue 14.5), memory and real Redis.

40 guesses for one username from 40 addresses, all at once, with ``max_failures: 5``: bcrypt runs
on its thread pool (real concurrency), and exactly 5 verifications may run — every attempt is
counted *before* the password is verified. A success, also one answered from the credential
cache, resets the username's count.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest

from extauthz.authn import basic as basic_module
from extauthz.authn.attempts import AttemptLimiter, InMemoryAttemptLimiter
from extauthz.authn.basic import BasicAuthenticator
from extauthz.authn.htpasswd import check_bcrypt, load_htpasswd
from extauthz.clock import system_clock
from extauthz.errors import AuthenticationError, Reason, TooManyAttempts
from extauthz.metrics import Metrics
from extauthz.state.redis import RedisClient, RedisTarget
from extauthz.state.stores import RedisAttemptLimiter
from extauthz.types import RequestView
from tests.support.builders import make_ctx, make_view
from tests.support.redis_server import RedisServer

MAX_FAILURES = 5
GUESSES = 40


@pytest.fixture(params=["memory", "redis"])
async def limiter(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[AttemptLimiter]:
    if request.param == "memory":
        yield InMemoryAttemptLimiter(MAX_FAILURES, 600, clock=system_clock)
        return
    client = RedisClient(RedisTarget(url=redis_server.url, timeout_seconds=2.0), Metrics())
    await client.start()
    try:
        yield RedisAttemptLimiter(client, prefix=f"t{secrets.token_hex(4)}:",
                                  max_failures=MAX_FAILURES, window_seconds=600)
    finally:
        await client.close()


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return check_bcrypt(password, hashed)

    monkeypatch.setattr(basic_module, "check_bcrypt", counting)
    return calls


def make(tmp_path: Path, limiter: AttemptLimiter) -> BasicAuthenticator:
    users = tmp_path / "users.htpasswd"
    users.write_text("alice:" + bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode() + "\n")
    return BasicAuthenticator("basic", load_htpasswd(users), make_ctx(clock=None),
                              limiter=limiter, hash_workers=4)


def attempt(password: str, address: str) -> RequestView:
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    view = make_view("/x", headers={"authorization": f"Basic {token}"})
    return dataclasses.replace(view, source_address=address)


async def test_forty_parallel_guesses_get_exactly_the_budget(
    tmp_path: Path, limiter: AttemptLimiter, bcrypt_calls: list[bytes]
) -> None:
    auth = make(tmp_path, limiter)
    auth._clock = system_clock  # the Redis counter expires in real time
    try:
        results = await asyncio.gather(
            *(auth.authenticate(attempt(f"guess-{i}", f"198.51.100.{i}")) for i in range(GUESSES)),
            return_exceptions=True,
        )
    finally:
        await auth.close()
    wrong = [r for r in results if isinstance(r, AuthenticationError)
             and r.reason is Reason.INVALID_CREDENTIALS]
    limited = [r for r in results if isinstance(r, TooManyAttempts)]
    assert len(bcrypt_calls) <= MAX_FAILURES, f"{len(bcrypt_calls)} verifications"
    assert len(wrong) == len(bcrypt_calls) == MAX_FAILURES
    assert len(limited) == GUESSES - MAX_FAILURES


async def test_a_cached_success_resets_the_username(
    tmp_path: Path, limiter: AttemptLimiter, bcrypt_calls: list[bytes]
) -> None:
    auth = make(tmp_path, limiter)
    auth._clock = system_clock
    try:
        assert await auth.authenticate(attempt("alice-pw", "192.0.2.1"))  # now in the cache
        for i in range(MAX_FAILURES - 1):
            with pytest.raises(AuthenticationError):
                await auth.authenticate(attempt(f"wrong-{i}", f"192.0.2.{10 + i}"))
        calls = len(bcrypt_calls)
        assert await auth.authenticate(attempt("alice-pw", "192.0.2.1"))  # from the cache
        assert len(bcrypt_calls) == calls  # no verification: the cache answered
        # The count restarted: MAX_FAILURES - 1 more failures are allowed, not 1.
        for i in range(MAX_FAILURES - 1):
            with pytest.raises(AuthenticationError) as info:
                await auth.authenticate(attempt(f"again-{i}", f"192.0.2.{50 + i}"))
            assert info.value.reason is Reason.INVALID_CREDENTIALS
    finally:
        await auth.close()
