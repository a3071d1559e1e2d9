"""The one cached-verifier helper (extauthz/authn/cache.py) and its expiry sweep (lru.py).

Under the fixed test clock: keys are digests, entries never outlive the credential nor the
cache's TTL, refusals only for the negative TTL, stale hits dropped, concurrent misses coalesced
only when asked, a reload's adoption capped by the new TTLs, and expired entries swept on insert
(not only on lookup) so a stream of short-lived credentials levels off.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from extauthz.authn.cache import CredentialCache, credential_key
from extauthz.authn.lru import TtlLru
from extauthz.clock import FixedClock
from extauthz.metrics import Metrics
from tests.support.builders import NOW
from tests.unit.test_jwt import sample


def test_the_key_is_a_digest_of_the_parts_never_the_credential() -> None:
    key = credential_key("secret-token")
    assert key == hashlib.sha256(b"secret-token").digest() and b"secret" not in key
    assert credential_key("a", "b") == hashlib.sha256(b"a\0b").digest()
    assert credential_key("a", "b") != credential_key("ab")
    assert credential_key("\udcff") == hashlib.sha256("\udcff".encode("utf-8", "surrogatepass")
                                                      ).digest()


def test_an_entry_lives_until_the_credential_ends_or_the_max_ttl() -> None:
    clock = FixedClock(NOW)
    cache: CredentialCache[str] = CredentialCache(10, clock=clock, max_ttl=60)
    assert cache.put(b"short", "v", NOW + 10) == NOW + 10  # the credential's own end
    assert cache.put(b"long", "v", NOW + 3600) == NOW + 60  # the max TTL
    assert cache.put(b"none", "v") == NOW + 60
    assert cache.put(b"over", "v", NOW - 1) is None and b"over" not in list(cache)
    clock.advance(10)
    assert cache.get(b"short", clock()) is None and cache.get(b"long", clock()) == "v"
    clock.advance(50)
    assert cache.get(b"long", clock()) is None and len(cache) == 0


def test_refusals_are_kept_for_the_negative_ttl_only() -> None:
    clock = FixedClock(NOW)
    refused = CredentialCache[str](10, clock=clock, max_ttl=300, negative_ttl=5,
                                   refused=lambda v: v == "no")
    assert refused.put(b"k", "no", NOW + 100) == NOW + 5
    never = CredentialCache[str](10, clock=clock, max_ttl=300, refused=lambda v: v == "no")
    assert never.put(b"k", "no") is None and len(never) == 0


def test_a_stale_hit_is_dropped_and_counted_as_a_miss() -> None:
    metrics = Metrics()
    cache: CredentialCache[int] = CredentialCache(10, clock=FixedClock(NOW), metrics=metrics,
                                                  label="jwt")
    cache.put(b"k", 1)
    assert cache.get(b"k", NOW, fresh=lambda v: v == 1) == 1
    assert cache.get(b"k", NOW, fresh=lambda v: False) is None
    assert b"k" not in list(cache)
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 1
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="miss") == 1


def test_a_disabled_cache_keeps_and_counts_nothing() -> None:
    metrics = Metrics()
    cache: CredentialCache[int] = CredentialCache(0, clock=FixedClock(NOW), metrics=metrics,
                                                  label="jwt")
    assert cache.through_sync(b"k", NOW, lambda: (1, None)) == 1
    assert len(cache) == 0 and cache.get(b"k", NOW) is None
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="miss") == 0


async def test_concurrent_misses_share_one_verification_only_when_coalescing() -> None:
    for coalesce, expected in ((True, 1), (False, 5)):
        calls = 0
        gate = asyncio.Event()

        async def verify() -> tuple[str, float | None]:
            nonlocal calls
            calls += 1
            await gate.wait()
            return "v", None

        cache: CredentialCache[str] = CredentialCache(10, clock=FixedClock(NOW),
                                                      coalesce=coalesce)
        waiters = [asyncio.ensure_future(cache.through(b"k", NOW, verify)) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*waiters) == ["v"] * 5
        assert calls == expected


async def test_a_coalesced_verification_survives_its_callers_and_failures_are_not_kept() -> None:
    cache: CredentialCache[str] = CredentialCache(10, clock=FixedClock(NOW), coalesce=True)
    gate = asyncio.Event()

    async def slow() -> tuple[str, float | None]:
        await gate.wait()
        return "v", None

    caller = asyncio.ensure_future(cache.through(b"k", NOW, slow))
    await asyncio.sleep(0)
    caller.cancel()  # Envoy gave up
    gate.set()
    await asyncio.sleep(0.01)
    assert cache.get(b"k", NOW) == "v"  # kept all the same

    async def failing() -> tuple[str, float | None]:
        raise RuntimeError("endpoint down")

    with pytest.raises(RuntimeError):
        await cache.through(b"bad", NOW, failing)
    assert b"bad" not in list(cache)


def test_adoption_caps_entries_by_the_new_ttls() -> None:
    clock = FixedClock(NOW)
    old: CredentialCache[str] = CredentialCache(10, clock=clock, max_ttl=300, negative_ttl=30,
                                                refused=lambda v: v == "no")
    old.put(b"yes", "ok", NOW + 250)
    old.put(b"no", "no")
    new: CredentialCache[str] = CredentialCache(10, clock=clock, max_ttl=100, negative_ttl=0,
                                                refused=lambda v: v == "no")
    new.adopt(old)
    assert list(new) == [b"yes"]
    clock.advance(100)
    assert new.get(b"yes", clock()) is None  # capped to the new max TTL


def test_expired_entries_are_swept_on_insert_not_only_on_lookup() -> None:
    cache: TtlLru[int, int] = TtlLru(1_000_000)
    now = 0.0
    for i in range(100_000):  # a stream of distinct credentials, each valid for 5 s
        now = i / 1000
        cache.put(i, i, now + 5, now)
    assert len(cache) <= 5 * 1000 + 1  # ~ rate x lifetime, not 100 000
    assert cache.indexed <= len(cache) + 1000


def test_the_expiry_index_groups_equal_expiries() -> None:
    cache: TtlLru[int, int] = TtlLru(1000)
    for i in range(900):
        cache.put(i, i, 100.0 + i // 300)  # three distinct expiries
    assert len(cache._due) == 3 and cache.indexed == 900
