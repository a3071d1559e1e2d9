"""The in-memory store: one replica's counts, in a bounded least-recently-used table.

A key's state is its windows' TATs (:mod:`extauthz.ratelimit.gcra`). The table holds at most
``max_keys`` keys; when it is full the least recently used key is forgotten, which gives that key
a fresh burst if it comes back (the bound of the docs holds while the keys in use fit). A key whose
TATs are all in the past is the same as an unknown key (its next request starts afresh).

Time is ``time.monotonic_ns`` (never steps with the wall clock); tests pass their own clock.
Single-threaded by design: the event loop runs one check at a time, and a check's step
(read, decide, write) has no ``await`` inside, so it is atomic on one replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from extauthz.ratelimit.gcra import Window, decide


def monotonic_us() -> int:
    """Microseconds of the monotonic clock."""
    return time.monotonic_ns() // 1000


class MemoryStore:
    """GCRA state of one limit (or of its fail-open fallback) on this replica."""

    def __init__(
        self, windows: Sequence[Window], max_keys: int,
        clock_us: Callable[[], int] = monotonic_us,
    ) -> None:
        self.windows = tuple(windows)
        self.max_keys = max_keys
        self._clock = clock_us
        self._tats: OrderedDict[str, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def hit(self, key: str) -> tuple[bool, list[int]]:
        """Count one request for ``key``: (allowed, delays ``max(TAT, now) - now`` per window)."""
        now = self._clock()
        tats = self._tats.get(key)
        allowed, new = decide(tats or [0] * len(self.windows), now, self.windows)
        if allowed:
            self._tats[key] = new
            self._tats.move_to_end(key)
            if len(self._tats) > self.max_keys:
                self._tats.popitem(last=False)
        return allowed, [max(0, t - now) for t in new]

    def peek(self, key: str) -> list[int]:
        """The delays of ``key`` now, without counting a request (``check --explain``)."""
        now = self._clock()
        return [max(0, t - now) for t in self._tats.get(key) or [0] * len(self.windows)]

    def inherit(self, previous: MemoryStore) -> None:
        """Take over the counts of the store this one replaces (a reload keeps everyone's quota)."""
        if previous.windows == self.windows:
            self._tats = previous._tats
            while len(self._tats) > self.max_keys:
                self._tats.popitem(last=False)
