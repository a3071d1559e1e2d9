"""GCRA maths (extauthz/ratelimit/gcra.py) and the in-memory store: the documented bound.

The bound: in any interval of length W one key gets at most ``burst + floor(W / T)`` allowed
requests (T = ceil(seconds * 1e6 / requests) us). Checked against random arrival sequences with
hypothesis, for every interval between two arrivals (the tightest ones).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.ratelimit import headers
from extauthz.ratelimit.gcra import MICROS, Window, decide, verdict
from extauthz.ratelimit.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * MICROS

    def __call__(self) -> int:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    store = MemoryStore([Window(10, 1, 3, "w")], 100, clock)
    assert [store.hit("k")[0] for _ in range(4)] == [True, True, True, False]
    clock.now += MICROS // 10  # one T: exactly one more
    assert [store.hit("k")[0] for _ in range(2)] == [True, False]
    assert store.hit("other")[0]  # keys are independent


def test_all_windows_must_allow_and_a_denied_request_consumes_nothing() -> None:
    clock = Clock()
    windows = [Window(100, 1, 100, "sec"), Window(3, 3600, 3, "hour")]
    store = MemoryStore(windows, 100, clock)
    assert [store.hit("k")[0] for _ in range(5)] == [True, True, True, False, False]
    allowed, delays = store.hit("k")
    v = verdict(allowed, delays, windows)
    assert not v.allowed
    # the per-second window was not advanced by the denied requests: 97 of 100 left
    assert v.windows[0].remaining == 97
    assert v.windows[1].remaining == 0 and v.windows[1].retry_after == 1200
    assert v.retry_after == 1200


def test_remaining_and_reset_follow_the_draft_semantics() -> None:
    w = Window(5, 10, 5, "p")  # T = 2 s
    allowed, tats = decide([0], 0, [w])
    v = verdict(allowed, tats, [w])
    assert (v.windows[0].remaining, v.windows[0].reset) == (4, 2)
    assert headers.state_items(v) == ['"p";r=4;t=2']
    assert headers.policy_item(w) == '"p";q=5;w=10'
    assert headers.policy_item(Window(5, 10, 2, "b")) == '"b";q=5;w=10;extauthz-burst=2'


def test_interval_rounds_up_so_the_rate_never_exceeds_the_configuration() -> None:
    w = Window(300_000, 1, 1, "fast")  # 3.33 us: rounded to 4 us
    assert w.interval_us == 4
    assert w.bound(1.0) <= 1 + 300_000


def test_lru_bound_on_keys() -> None:
    store = MemoryStore([Window(1, 60, 1, "w")], 100, Clock())
    for i in range(250):
        store.hit(f"k{i}")
    assert len(store) == 100


@settings(max_examples=200, deadline=None)
@given(
    requests=st.integers(1, 20),
    seconds=st.integers(1, 5),
    burst=st.integers(1, 10),
    gaps=st.lists(st.integers(0, 400_000), min_size=1, max_size=300),
)
def test_no_interval_gets_more_than_the_bound(requests: int, seconds: int, burst: int,
                                              gaps: list[int]) -> None:
    window = Window(requests, seconds, burst, "w")
    clock = Clock()
    store = MemoryStore([window], 10, clock)
    allowed_at = []
    for gap in gaps:
        clock.now += gap
        if store.hit("k")[0]:
            allowed_at.append(clock.now)
    t = window.interval_us
    for i, start in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            span = allowed_at[j] - start
            assert j - i + 1 <= burst + span // t
