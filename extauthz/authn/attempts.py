"""Brute-force limiting: refuse a key (username, source address, ...) after too many failures.

The contract is :class:`AttemptLimiter` (async, so a shared store such as Redis can implement it
later). A caller checks every key that identifies an attempt **before** it does expensive or
oracle-like work (bcrypt), records a failure against each key when the credential is wrong, and
resets the keys it trusts again after a success::

    await enforce(limiter, keys)          # raises TooManyAttempts (429 + Retry-After)
    if not verified:
        for key in keys:
            await limiter.record_failure(key)

:class:`InMemoryAttemptLimiter` keeps, per key, the times of the last ``max_failures`` failures (a
sliding log: memory per key is bounded by ``max_failures``). A key is blocked while it has
``max_failures`` failures within ``window_seconds``; it is unblocked when the oldest of them leaves
the window. At most ``max_keys`` keys are tracked; beyond that the least recently failed key is
forgotten (bounded memory under a flood of distinct usernames, at the price that a flood of
distinct keys can age out an old entry — the per-address key of the flooder fills up first).

Single-threaded by design (one asyncio loop), like the rest of the per-process state.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from extauthz.clock import Clock, system_clock
from extauthz.errors import Reason, TooManyAttempts


@runtime_checkable
class AttemptLimiter(Protocol):
    """Counts failed attempts per key."""

    async def check(self, key: str) -> int:
        """Seconds until ``key`` may try again (``0`` = allowed now). Never records anything."""
        ...

    async def record_failure(self, key: str) -> None:
        """Record one failed attempt for ``key``."""
        ...

    async def reset(self, key: str) -> None:
        """Forget the failures of ``key`` (e.g. after a successful login)."""
        ...


class InMemoryAttemptLimiter:
    """A per-process :class:`AttemptLimiter` (see the module docstring for the semantics)."""

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        max_keys: int = 100_000,
        clock: Clock = system_clock,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be >= 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    async def check(self, key: str) -> int:
        return self._retry_after(key, self._clock())

    async def record_failure(self, key: str) -> None:
        now = self._clock()
        log = self._failures.get(key)
        if log is None:
            log = deque(maxlen=self.max_failures)
            self._failures[key] = log
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        log.append(now)

    async def reset(self, key: str) -> None:
        self._failures.pop(key, None)

    def _retry_after(self, key: str, now: float) -> int:
        log = self._failures.get(key)
        if log is None:
            return 0
        # Drop failures that have left the window (oldest first).
        while log and now - log[0] >= self.window_seconds:
            log.popleft()
        if not log:
            del self._failures[key]
            return 0
        if len(log) < self.max_failures:
            return 0
        return max(1, math.ceil(log[0] + self.window_seconds - now))

    def __len__(self) -> int:
        """Number of keys currently tracked (for tests and metrics)."""
        return len(self._failures)


async def enforce(
    limiter: AttemptLimiter,
    keys: Iterable[str],
    description: str = "too many failed attempts; try again later",
) -> None:
    """Raise :class:`TooManyAttempts` if any of ``keys`` is blocked (Retry-After = the longest)."""
    wait = 0
    for key in keys:
        wait = max(wait, await limiter.check(key))
    if wait > 0:
        raise TooManyAttempts(Reason.TOO_MANY_ATTEMPTS, description, retry_after=wait)
