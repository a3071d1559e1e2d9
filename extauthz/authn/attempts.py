"""Brute-force limiting: refuse a key (username, source address, ...) after too many failures.

The contract is :class:`AttemptLimiter` (async, so the Redis limiter of
:mod:`extauthz.state.stores` implements it too). A caller **reserves** an attempt against every
key that identifies it *before* it does expensive or oracle-like work (bcrypt): the reservation
counts as a failure at once, so concurrent attempts cannot all pass a check that none of them has
yet counted against; a blocked key refuses the reservation (429 + Retry-After). After a success
the caller gives the reservation back (:meth:`AttemptLimiter.release`) or forgets the key
(:meth:`AttemptLimiter.reset`)::

    held = await reserve_all(limiter, keys)   # raises TooManyAttempts, counts nothing then
    if verified:
        await limiter.reset(user_key); await limiter.release(address_key)

:class:`InMemoryAttemptLimiter` keeps, per key, the times of the last ``max_failures`` failures (a
sliding log: memory per key is bounded by ``max_failures``). A key is blocked while it has
``max_failures`` failures within ``window_seconds``; it is unblocked when the oldest of them leaves
the window. At most ``max_keys`` keys are tracked; beyond that the least recently failed key is
forgotten (bounded memory under a flood of distinct usernames, at the price that a flood of
distinct keys can age out an old entry — the per-address key of the flooder fills up first).
Keys whose failures have all left the window are forgotten as soon as they reach the front of
that order, so after a flood memory returns to what the live window needs.

Single-threaded by design (one asyncio loop), like the rest of the per-process state.
"""

from __future__ import annotations

import contextlib
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

    async def reserve(self, key: str) -> int:
        """Atomically: if ``key`` is blocked, the seconds until it may try again (nothing
        counted); else count one attempt (as a failure) and return 0."""
        ...

    async def release(self, key: str) -> None:
        """Give back one attempt counted by :meth:`reserve` (it succeeded)."""
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
        failures: OrderedDict[str, deque[float]] | None = None,
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
        #: key -> times of its last failures (oldest first). ``failures`` may be shared with the
        #: limiters of earlier configurations (extauthz.state.local): counts survive reloads,
        #: and each limiter applies its own limits to them.
        self._failures: OrderedDict[str, deque[float]] = (
            OrderedDict() if failures is None else failures
        )

    async def check(self, key: str) -> int:
        now = self._clock()
        self._purge(now)
        return self._retry_after(key, now)

    def _purge(self, now: float) -> None:
        """Forget keys whose every failure has left the window. Keys are in order of their last
        failure (``move_to_end``), so the expired ones are at the front: amortised O(1)."""
        failures = self._failures
        while failures:
            log = failures[next(iter(failures))]
            if log and now - log[-1] < self.window_seconds:
                return
            failures.popitem(last=False)

    async def record_failure(self, key: str) -> None:
        now = self._clock()
        self._purge(now)
        log = self._failures.get(key)
        if log is None:
            log = deque()
            self._failures[key] = log
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        log.append(now)
        while len(log) > self.max_failures:  # memory per key bounded by max_failures
            log.popleft()

    async def reset(self, key: str) -> None:
        self._failures.pop(key, None)

    async def reserve(self, key: str) -> int:
        # No await between the check and the count: atomic on the event loop.
        wait = self._retry_after(key, self._clock())
        if wait == 0:
            await self.record_failure(key)
        return wait

    async def release(self, key: str) -> None:
        log = self._failures.get(key)
        if log:
            log.pop()
            if not log:
                del self._failures[key]

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
        # Blocked until the max_failures-th most recent failure leaves the window (the log may
        # be longer when an earlier configuration allowed more failures).
        return max(1, math.ceil(log[-self.max_failures] + self.window_seconds - now))

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


async def reserve_all(
    limiter: AttemptLimiter,
    keys: Iterable[str],
    description: str = "too many failed attempts; try again later",
) -> list[str]:
    """Reserve one attempt against every key, or none: raises :class:`TooManyAttempts` (after
    giving back what it reserved) when one of them is blocked. Returns the keys reserved.

    Reserving key by key (not in one atomic step over all keys) keeps every Redis call on one
    key; a reservation given back a moment later can only make a concurrent attempt look
    blocked, never let one through.
    """
    held: list[str] = []
    try:
        for key in keys:
            wait = await limiter.reserve(key)
            if wait > 0:
                raise TooManyAttempts(Reason.TOO_MANY_ATTEMPTS, description, retry_after=wait)
            held.append(key)
    except BaseException:
        for key in held:
            # best effort: a reservation that stays counted is the safe side
            with contextlib.suppress(Exception):
                await limiter.release(key)
        raise
    return held
