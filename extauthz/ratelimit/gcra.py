"""GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) — the maths only.

One window allows ``requests`` per ``seconds`` with bursts of at most ``burst``:

* emission interval ``T = seconds / requests`` (one request's worth of quota refills every T);
* tolerance ``tau = (burst - 1) * T``;
* state: ``TAT``, the theoretical arrival time (a key never seen has ``TAT <= now``).

A request at time ``now`` is allowed iff ``max(TAT, now) - now <= tau``; if it is, ``TAT`` becomes
``max(TAT, now) + T``. A limit with several windows allows a request only if *every* window allows
it, and then advances every window (all or nothing: a denied request consumes nothing).

**The bound** (proved in docs/ratelimit.md, checked by tests/unit/test_ratelimit_gcra.py): in any
interval of length ``W``, one key gets at most ``burst + floor(W / T)`` allowed requests — for
``W = seconds`` that is ``burst + requests``; the long-run rate is exactly ``requests / seconds``.

The state is the *delay* ``d = TAT - now`` after the decision (what the Redis script returns too,
so the headers are computed by the same code for both stores). Times are in microseconds
(integers), so the memory store and the Lua script (Lua numbers are doubles: exact to 2^53 us,
about 285 years) round identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Window:
    """One compiled window (see the module docstring)."""

    requests: int
    seconds: int
    burst: int
    #: the policy name in the RateLimit-Policy / RateLimit headers
    policy: str
    #: T in microseconds, rounded *up*: the rate never exceeds ``requests / seconds`` (derived)
    interval_us: int = field(init=False, compare=False)
    #: tau in microseconds (derived)
    tolerance_us: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        interval = -(-self.seconds * MICROS // self.requests)
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", (self.burst - 1) * interval)

    def bound(self, span_seconds: float) -> int:
        """Most requests one key can get in any interval of ``span_seconds`` (see above)."""
        return self.burst + int(span_seconds * MICROS // self.interval_us)


@dataclass(frozen=True, slots=True)
class WindowState:
    """What one window says about a request: for the headers and the explain trace."""

    window: Window
    #: quota units left now (after this request when it was allowed)
    remaining: int
    #: seconds until one more unit is available (the RateLimit ``t`` parameter)
    reset: int
    #: denied by this window: seconds until a request would be allowed (else 0)
    retry_after: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """A limit's decision for one request."""

    allowed: bool
    windows: tuple[WindowState, ...]

    @property
    def retry_after(self) -> int:
        """Whole seconds until every window allows a request again (0 when allowed)."""
        return max((w.retry_after for w in self.windows), default=0)

    @property
    def remaining(self) -> int:
        """The smallest remaining quota over the windows."""
        return min((w.remaining for w in self.windows), default=0)


def _ceil_seconds(micros: int) -> int:
    return max(0, -(-micros // MICROS))


def decide(tats: Sequence[int], now: int, windows: Sequence[Window]) -> tuple[bool, list[int]]:
    """The GCRA step for one limit: (allowed, TATs to store). ``tats``: 0 for unknown keys."""
    starts = [max(tat, now) for tat in tats]
    allowed = all(start - now <= w.tolerance_us for start, w in zip(starts, windows, strict=True))
    if not allowed:
        return False, list(tats)
    return True, [start + w.interval_us for start, w in zip(starts, windows, strict=True)]


def verdict(allowed: bool, delays: Sequence[int], windows: Sequence[Window]) -> Verdict:
    """Headers' view of a decision from the delays ``d = max(TAT, now) - now`` after it."""
    states = []
    for d, w in zip(delays, windows, strict=True):
        t, capacity = w.interval_us, w.burst * w.interval_us
        d = max(0, d)
        remaining = max(0, (capacity - d) // t)
        # one more unit once d has dropped below capacity - (remaining + 1) * T
        reset = 0 if remaining >= w.burst else _ceil_seconds(d - (w.burst - remaining - 1) * t)
        retry = 0
        if not allowed and d > w.tolerance_us:
            retry = max(1, _ceil_seconds(d - w.tolerance_us))
        states.append(WindowState(w, remaining, reset, retry))
    return Verdict(allowed, tuple(states))
