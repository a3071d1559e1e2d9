"""settle_heap: garbage cycles are reclaimed, the survivors leave the collector's generations."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from extauthz.snapshot import settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_cycles_are_collected_and_survivors_frozen() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b
    kept = _Node()
    settle_heap()
    assert dead() is None  # the cycle was collected, not frozen for good
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects(generation=2))  # skipped by collections
    # a second call (a reload) unfreezes first: what was frozen and is now garbage goes away
    c, d = _Node(), _Node()
    c.other, d.other = d, c
    gone = weakref.ref(c)
    settle_heap()
    del c, d
    settle_heap()
    assert gone() is None
