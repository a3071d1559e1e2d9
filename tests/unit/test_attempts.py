"""The brute-force limiter: thresholds, sliding window with a fixed clock, bounded memory."""

from __future__ import annotations

import pytest

from extauthz.authn.attempts import AttemptLimiter, InMemoryAttemptLimiter, enforce
from extauthz.clock import FixedClock
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import Reason, TooManyAttempts

NOW = 1_900_000_000.0


def make(max_failures: int = 3, window: float = 60, max_keys: int = 1000
         ) -> tuple[InMemoryAttemptLimiter, FixedClock]:
    clock = FixedClock(NOW)
    return InMemoryAttemptLimiter(max_failures, window, max_keys=max_keys, clock=clock), clock


def test_implements_the_protocol() -> None:
    assert isinstance(make()[0], AttemptLimiter)


async def test_blocks_after_max_failures_only() -> None:
    limiter, _ = make()
    for _ in range(2):
        await limiter.record_failure("u")
        assert await limiter.check("u") == 0
    await limiter.record_failure("u")
    assert await limiter.check("u") == 60
    assert await limiter.check("other") == 0


async def test_window_slides_with_the_clock() -> None:
    limiter, clock = make(max_failures=3, window=60)
    await limiter.record_failure("u")        # t=0
    clock.advance(20)
    await limiter.record_failure("u")        # t=20
    await limiter.record_failure("u")        # t=20
    assert await limiter.check("u") == 40    # until the t=0 failure leaves the window
    clock.advance(39.5)
    assert await limiter.check("u") == 1     # rounded up, never 0 while blocked
    clock.advance(0.5)                       # t=60: the first failure is out
    assert await limiter.check("u") == 0
    await limiter.record_failure("u")        # back to 3 within the window
    assert await limiter.check("u") == 20
    clock.advance(3600)
    assert await limiter.check("u") == 0
    assert len(limiter) == 0                 # expired keys are dropped when seen


async def test_reset_forgets_failures() -> None:
    limiter, _ = make()
    for _ in range(3):
        await limiter.record_failure("u")
    await limiter.reset("u")
    assert await limiter.check("u") == 0
    await limiter.reset("never-seen")


async def test_memory_is_bounded_by_max_keys() -> None:
    limiter, _ = make(max_keys=100)
    for i in range(1000):
        await limiter.record_failure(f"user{i}")
    assert len(limiter) == 100
    assert await limiter.check("user999") == 0  # one failure only
    # The least recently failed keys were evicted; the newest are kept.
    for _ in range(2):
        await limiter.record_failure("user999")
    assert await limiter.check("user999") > 0


async def test_memory_per_key_is_bounded_by_max_failures() -> None:
    limiter, _ = make(max_failures=3)
    for _ in range(1000):
        await limiter.record_failure("u")
    assert len(limiter._failures["u"]) == 3


async def test_enforce_raises_429_with_the_longest_wait() -> None:
    limiter, clock = make(max_failures=2, window=100)
    await limiter.record_failure("a")
    await limiter.record_failure("a")
    clock.advance(50)
    await limiter.record_failure("b")
    await limiter.record_failure("b")
    with pytest.raises(TooManyAttempts) as info:
        await enforce(limiter, ["a", "b", "c"])
    assert info.value.reason is Reason.TOO_MANY_ATTEMPTS
    assert info.value.retry_after == 100
    decision = from_error(info.value, "r")
    assert decision.http_status == 429
    assert decision.grpc_code is GrpcCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "100") in decision.response_headers
    await enforce(limiter, ["c"])


@pytest.mark.parametrize(("failures", "window", "keys"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_parameters_are_refused(failures: int, window: float, keys: int) -> None:
    with pytest.raises(ValueError):
        InMemoryAttemptLimiter(failures, window, max_keys=keys)
