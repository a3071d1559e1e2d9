"""How long a signature nonce must be remembered, across configuration changes.

A signature with ``created`` *c* and/or ``expires`` *e* is accepted by a configuration with
maximum age *A* and clock skew *S* until::

    end(A, S) = min(c + A + S, e + S)          (the terms that are present)

If the nonce were remembered only until ``end`` of the configuration that accepted it, a later
configuration with a larger *A* or *S* (a reload, another replica in a rolling update, or the same
key under another authenticator) would accept the signature again after the nonce was forgotten.

:class:`WindowHistory` records, per signing key, the largest ``(A, S)`` ever configured and *when*
it grew (a short list of steps, non-decreasing in both). Two rules then close every replay window:

* **retain** a nonce until ``end`` under the largest ``(A, S)`` known now;
* **accept** a signature only until ``min(end(config), end(limit at s))``, where *s* is the
  earliest moment the signature could have been used first under any configuration
  (``c - S_max``, or ``e - A_max - S_max`` without ``created``) and "limit at s" the largest
  ``(A, S)`` known at *s*.

Why it holds: the first use happened at some *a* >= *s*, and kept the nonce until ``end`` under the
limit known at *a*, which is at least the limit at *s*; a replay is accepted only up to ``end``
under the limit at *s*, so it always finds the nonce. The price: a signature created shortly
before the window was widened keeps the narrower window (it expires as it would have before).

The same arithmetic runs in the Redis store's Lua script (:mod:`extauthz.state.stores`), there on
integer milliseconds; this module is the reference and is unit-tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: more steps than this are merged (dropping the second step keeps a *smaller* limit for the
#: signatures it covered: safe, they only get a narrower window)
MAX_STEPS = 32


@dataclass(frozen=True, slots=True)
class NonceUse:
    """One nonce to record, with what the store needs to decide how long to keep it."""

    #: stable identity of the signing key (key id + secret fingerprint, never the
    #: authenticator's name: a renamed authenticator must not forget its nonces)
    scope: str
    nonce: str
    created: float | None
    expires: float | None
    #: the accepting configuration's max_age_seconds and max_skew_seconds
    max_age: float
    skew: float
    #: most live nonces this scope may hold (the per-key share of the cache)
    share: int


def window_end(created: float | None, expires: float | None, max_age: float, skew: float) -> float:
    """The last moment a signature with these times is accepted under ``(max_age, skew)``."""
    ends: list[float] = []
    if created is not None:
        ends.append(created + max_age + skew)
    if expires is not None:
        ends.append(expires + skew)
    if not ends:
        raise ValueError("a signature needs created or expires")
    return min(ends)


def earliest_use(created: float | None, expires: float | None, max_age: float, skew: float
                 ) -> float:
    """The earliest moment such a signature can have been accepted under any configuration
    whose limits do not exceed ``(max_age, skew)``."""
    if created is not None:
        return created - skew
    if expires is None:
        raise ValueError("a signature needs created or expires")
    return expires - max_age - skew


def nominal_creation(created: float | None, expires: float | None, max_age: float) -> float:
    """When the signature says (or, without ``created``, implies) it was made."""
    if created is not None:
        return created
    if expires is None:
        raise ValueError("a signature needs created or expires")
    return expires - max_age


class WindowHistory:
    """The largest ``(max_age, skew)`` ever seen for one key, and when it grew."""

    def __init__(self) -> None:
        #: (since, max_age, skew); the first step's ``since`` is -inf
        self.steps: list[tuple[float, float, float]] = []

    def widen(self, now: float, max_age: float, skew: float) -> None:
        """Record that a configuration with ``(max_age, skew)`` is live at ``now``."""
        if not self.steps:
            self.steps.append((-math.inf, max_age, skew))
            return
        _, age, sk = self.steps[-1]
        if max_age > age or skew > sk:
            self.steps.append((now, max(age, max_age), max(sk, skew)))
            if len(self.steps) > MAX_STEPS:
                del self.steps[1]

    @property
    def current(self) -> tuple[float, float]:
        """The largest ``(max_age, skew)`` known."""
        _, age, skew = self.steps[-1]
        return age, skew

    def limit_at(self, moment: float) -> tuple[float, float]:
        """The largest ``(max_age, skew)`` known at ``moment``."""
        age, skew = self.steps[0][1], self.steps[0][2]
        for since, a, s in self.steps:
            if since > moment:
                break
            age, skew = a, s
        return age, skew

    def plan(self, use: NonceUse, now: float) -> tuple[float, float]:
        """``(accept_until, retain_until)`` for ``use`` at ``now`` (records its window first)."""
        self.widen(now, use.max_age, use.skew)
        age_max, skew_max = self.current
        first = earliest_use(use.created, use.expires, age_max, skew_max)
        age_s, skew_s = self.limit_at(first)
        accept = min(
            window_end(use.created, use.expires, use.max_age, use.skew),
            window_end(use.created, use.expires, age_s, skew_s),
        )
        retain = window_end(use.created, use.expires, age_max, skew_max)
        return accept, retain
