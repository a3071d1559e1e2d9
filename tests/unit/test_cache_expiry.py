"""Caches drop expired entries (issue 13.8), under the fixed test clock.

Every TTL cache (JWT verified tokens, introspection results, mTLS verifications and
presentations, Basic credentials) is a :class:`~extauthz.authn.lru.TtlLru`: the cache must hold
only entries that are still valid, so a stream of distinct credentials used once each levels off
at (credentials per second x lifetime) instead of filling ``cache_size`` with dead entries.
The RSS curve is measured by ``scripts/measure_cache_rss.py`` (numbers in docs/state.md).
"""

from __future__ import annotations

import gc
from typing import Any

from extauthz.authn.attempts import InMemoryAttemptLimiter
from extauthz.authn.lru import TtlLru
from extauthz.clock import FixedClock
from tests.support.builders import NOW, make_view
from tests.support.tokens import claims, ed25519_key, mint, rsa_key
from tests.unit.test_jwt import build


def test_expired_entries_are_dropped_on_the_next_lookup() -> None:
    cache: TtlLru[bytes, int] = TtlLru(100_000)
    for i in range(1000):
        cache.put(b"k%d" % i, i, 100.0 + i % 10)
    assert len(cache) == 1000
    assert cache.get(b"other", 104.5) is None
    assert len(cache) == 500  # expiries 100..104 gone, 105..109 still live
    assert cache.get(b"k9", 104.5) == 9
    assert cache.get(b"other", 110.0) is None
    assert len(cache) == 0


def test_a_renewed_entry_is_not_dropped_by_its_old_expiry() -> None:
    cache: TtlLru[str, str] = TtlLru(10)
    cache.put("a", "old", 10.0)
    cache.put("a", "new", 20.0)
    assert cache.get("a", 15.0) == "new"
    assert cache.get("a", 20.0) is None and len(cache) == 0


def test_the_expiry_heap_stays_bounded_under_lru_churn() -> None:
    cache: TtlLru[int, int] = TtlLru(100)
    for i in range(100_000):  # all live (far expiry), so only the LRU bound evicts
        cache.put(i, i, 1e12)
    assert len(cache) == 100
    assert cache.indexed <= 100 + 25 + 64 + 1


def test_the_lru_bound_still_holds_and_zero_disables() -> None:
    cache: TtlLru[int, int] = TtlLru(3)
    for i in range(5):
        cache.put(i, i, 1e12)
    assert list(cache) == [2, 3, 4]
    off: TtlLru[int, int] = TtlLru(0)
    off.put(1, 1, 1e12)
    assert off.get(1, 0) is None and len(off) == 0


def bearer_view(token: str) -> Any:
    return make_view("/x", headers={"authorization": f"Bearer {token}"})


async def test_jwt_cache_forgets_tokens_once_they_expired() -> None:
    clock = FixedClock(NOW)
    key = rsa_key()
    auth = build([key], clock=clock)  # the default cache_size, leeway 30 s
    try:
        for i in range(200):
            token = mint(key, claims(now=NOW, ttl=60, subject=f"user-{i}"))
            assert await auth.authenticate(bearer_view(token)) is not None
        assert auth._cache is not None and len(auth._cache) == 200
        clock.advance(60 + 30)  # exp + leeway: none of them verifies any more
        fresh = mint(key, claims(now=clock(), ttl=60, subject="late"))
        assert await auth.authenticate(bearer_view(fresh)) is not None
        assert len(auth._cache) == 1  # only the live token is kept
    finally:
        await auth.close()


async def test_the_basic_limiter_forgets_keys_whose_window_is_over() -> None:
    clock = FixedClock(NOW)
    limiter = InMemoryAttemptLimiter(5, 60, clock=clock)
    for i in range(1000):  # a flood of distinct usernames, one failure each
        await limiter.record_failure(f"user:{i}")
    assert len(limiter) == 1000
    clock.advance(30)
    await limiter.record_failure("user:late")
    assert len(limiter) == 1001  # all still inside their window
    clock.advance(31)
    assert await limiter.check("user:other") == 0
    assert len(limiter) == 1  # only the late one is left


async def test_a_cached_jwt_costs_under_700_bytes() -> None:
    """docs/memory.md: ~450 bytes per entry (no claims, no token text; shared scope sets and
    times). A generous bound: tracemalloc counts are deterministic, not timing."""
    import tracemalloc
    import uuid

    clock = FixedClock(NOW)
    key = ed25519_key()
    auth = build([key], clock=clock, algorithms=["EdDSA"])
    count = 2000
    views = [bearer_view(mint(key, claims(now=NOW, ttl=3600, subject=f"user-{i:08d}",
                                          jti=str(uuid.uuid4()), nbf=int(NOW),
                                          scope="orders:read orders:write", azp="web")))
             for i in range(count + 1)]
    try:
        await auth.authenticate(views[-1])
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for view in views[:count]:
            assert await auth.authenticate(view) is not None
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        per_entry = sum(s.size_diff for s in after.compare_to(before, "filename")) / count
        assert len(auth._cache) == count + 1
        assert per_entry < 700, per_entry
    finally:
        await auth.close()
