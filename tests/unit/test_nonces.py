"""The in-memory expiring set under the replay cache: replays detected, entries expire, the bound
fails closed."""

from __future__ import annotations

import pytest

from extauthz.authn.nonces import ExpiringSet as MemoryNonceStore
from extauthz.authn.nonces import NonceStoreFull
from extauthz.clock import FixedClock


async def test_second_use_is_a_replay() -> None:
    store = MemoryNonceStore(10, FixedClock(1000))
    assert await store.remember("k1\x00n1", 1100) is True
    assert await store.remember("k1\x00n1", 1100) is False
    assert await store.remember("k2\x00n1", 1100) is True  # scoped by the caller's key


async def test_entries_expire_and_may_be_reused_after_their_window() -> None:
    clock = FixedClock(1000)
    store = MemoryNonceStore(10, clock)
    assert await store.remember("n", 1100)
    clock.set(1100)
    assert not await store.remember("n", 1200)  # live up to and including its expiry
    clock.set(1100.001)
    assert await store.remember("n", 1200)  # expired after 1100: remembered again
    assert not await store.remember("n", 1200)
    assert len(store) == 1


async def test_full_store_refuses_instead_of_evicting_live_entries() -> None:
    clock = FixedClock(1000)
    store = MemoryNonceStore(2, clock)
    assert await store.remember("a", 1100)
    assert await store.remember("b", 1200)
    with pytest.raises(NonceStoreFull):
        await store.remember("c", 1200)
    assert not await store.remember("a", 1100)  # "a" was not evicted: still a replay
    clock.set(1100.5)  # "a" expired: room again
    assert await store.remember("c", 1200)
    assert len(store) == 2


async def test_entry_already_outside_its_window_is_not_stored() -> None:
    store = MemoryNonceStore(1, FixedClock(1000))
    assert await store.remember("old", 999)
    assert len(store) == 0


async def test_long_keys_cost_a_fixed_digest() -> None:
    store = MemoryNonceStore(5, FixedClock(0))
    assert await store.remember("x" * 10_000, 10)
    assert not await store.remember("x" * 10_000, 10)
    assert await store.remember("x" * 9_999, 10)


async def test_close_forgets_everything() -> None:
    store = MemoryNonceStore(5, FixedClock(0))
    await store.remember("a", 10)
    await store.close()
    assert len(store) == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryNonceStore(0, FixedClock(0))
