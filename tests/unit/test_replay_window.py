"""The window arithmetic of the replay cache (extauthz.authn.replay_window), and the property it
exists for: under any sequence of configurations (widened, narrowed, widened again) a nonce is
accepted at most once (issue 14.2). The Redis script implements the same arithmetic and is
checked against real Redis in tests/unit/test_state_stores.py."""

from __future__ import annotations

import asyncio
import math
import secrets

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.authn.nonces import MemoryNonceStore, NonceStore, NonceTooOld, NonceUse
from extauthz.authn.replay_window import WindowHistory, earliest_use, window_end
from extauthz.clock import FixedClock
from extauthz.metrics import Metrics
from extauthz.state.redis import RedisClient, RedisTarget
from extauthz.state.stores import RedisNonceStore
from tests.support.redis_server import RedisServer


def test_window_end_takes_the_earliest_bound() -> None:
    assert window_end(100, None, 10, 5) == 115
    assert window_end(None, 100, 10, 5) == 105
    assert window_end(100, 108, 10, 5) == 113


def test_earliest_use() -> None:
    assert earliest_use(100, None, 10, 5) == 95
    assert earliest_use(None, 100, 10, 5) == 85


def test_history_records_only_widenings() -> None:
    history = WindowHistory()
    history.widen(0, 0, 5)
    history.widen(10, 0, 3)  # narrower: nothing recorded
    history.widen(20, 0, 60)
    history.widen(30, 10, 60)
    assert history.steps == [(-math.inf, 0, 5), (20, 0, 60), (30, 10, 60)]
    assert history.current == (10, 60)
    assert history.limit_at(19) == (0, 5)
    assert history.limit_at(25) == (0, 60)


def use(nonce: str, created: float, age: float, skew: float) -> NonceUse:
    return NonceUse(scope="k", nonce=nonce, created=created, expires=None, max_age=age,
                    skew=skew, share=10_000)


events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=50),  # time passes
        st.sampled_from([0.0, 5.0, 30.0]),  # max_age of the live configuration
        st.sampled_from([1.0, 10.0, 60.0]),  # max_skew of the live configuration
        st.integers(min_value=0, max_value=3),  # which signature is presented (a small pool)
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events=events, made=st.lists(st.floats(min_value=-80, max_value=80), min_size=4,
                                    max_size=4))
def test_a_nonce_is_never_accepted_twice(events: list[tuple[float, float, float, int]],
                                         made: list[float]) -> None:
    clock = FixedClock(1000.0)
    store = MemoryNonceStore(clock)
    accepted: set[int] = set()
    for advance, age, skew, which in events:
        clock.advance(advance)
        now = clock()
        created = 1000.0 + made[which]
        # The authenticator's own time checks under the live configuration.
        if created > now + skew or now > window_end(created, None, age, skew):
            continue
        try:
            fresh = store.remember_now(use(f"n{which}", created, age, skew))
        except NonceTooOld:
            continue
        if fresh:
            assert which not in accepted, "a used nonce was accepted again"
            accepted.add(which)


# -- the Redis script decides exactly as this module (differential, on a real server) ------------


int_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=50),
        st.sampled_from([0, 5, 30]),
        st.sampled_from([1, 10, 60]),
        st.integers(min_value=0, max_value=3),
    ),
    min_size=1,
    max_size=25,
)


async def _outcomes(store: NonceStore, clock: FixedClock, scope: str,
                    events: list[tuple[int, int, int, int]], made: list[int]) -> list[str]:
    out: list[str] = []
    for advance, age, skew, which in events:
        clock.advance(advance)
        created = 1_800_000_000 + made[which]
        if created > clock() + skew or clock() > window_end(created, None, age, skew):
            out.append("config")
            continue
        nonce_use = NonceUse(scope=scope, nonce=f"n{which}", created=created, expires=None,
                             max_age=age, skew=skew, share=10_000)
        try:
            out.append("fresh" if await store.remember(nonce_use) else "replay")
        except NonceTooOld:
            out.append("too_old")
    return out


@settings(max_examples=40, deadline=None)
@given(events=int_events, made=st.lists(st.integers(min_value=-80, max_value=80), min_size=4,
                                        max_size=4))
def test_the_redis_script_decides_like_the_memory_store(
    redis_server: RedisServer, events: list[tuple[int, int, int, int]], made: list[int]
) -> None:
    async def run() -> tuple[list[str], list[str]]:
        memory_clock, redis_clock = FixedClock(1_800_000_000), FixedClock(1_800_000_000)
        client = RedisClient(RedisTarget(url=redis_server.url, timeout_seconds=2.0), Metrics())
        await client.start()
        try:
            prefix = f"d{secrets.token_hex(4)}:"
            # an epoch long before the simulated signatures (a Redis that kept its data)
            await client.run("nonce", lambda r: r.set(f"{prefix}epoch", "1000-x"))
            redis_store = RedisNonceStore(client, prefix=prefix, owner="x", clock=redis_clock)
            expected = await _outcomes(MemoryNonceStore(memory_clock), memory_clock, "s",
                                       events, made)
            got = await _outcomes(redis_store, redis_clock, "s", events, made)
        finally:
            await client.close()
        return expected, got

    expected, got = asyncio.run(run())
    assert got == expected
