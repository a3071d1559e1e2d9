"""Time source. Everything that reads the time takes a :data:`Clock` so tests can fix it."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Returns the current time as POSIX seconds (wall clock: token expiry is wall-clock time).
Clock = Callable[[], float]

system_clock: Clock = time.time


class FixedClock:
    """A clock for tests: returns ``now`` until it is moved with :meth:`advance` or :meth:`set`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now
