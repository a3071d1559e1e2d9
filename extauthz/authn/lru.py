"""A small bounded LRU cache whose entries expire at an absolute time.

Single-threaded by design (the server runs on one asyncio loop). The cache never holds more than
``maxsize`` entries, and it does not keep **expired** entries either: every lookup first drops
the entries whose time has passed, found in expiry order through a heap (amortised O(log n) per
entry, once). Without that, a stream of distinct credentials used once each (every new token of
every client) would fill the cache to ``maxsize`` with dead entries and keep it there — for the
JWT cache's default 100 000 verified tokens, ~200 MiB of memory holding nothing of use. With it
the cache holds only the credentials seen within their lifetime (and at most ``maxsize``).
``maxsize = 0`` disables it: ``put`` stores nothing and ``get`` always misses.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: the expiry heap is rebuilt from the live entries when it holds this many more items than
#: ``maxsize`` (entries evicted by the LRU bound or replaced leave their heap item behind until it
#: expires): at most 25 % extra items, rebuilt in O(maxsize) every maxsize / 4 puts
_COMPACT_SLACK = 4


class TtlLru(Generic[K, V]):
    """Bounded LRU map from ``K`` to ``V``; each entry is valid while ``now < expires_at``."""

    __slots__ = ("_data", "_heap", "_seq", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        #: (expires_at, tie-breaker, key): keys need not be orderable (the float is the same
        #: object as in ``_data``)
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    def purge(self, now: float) -> int:
        """Drop every entry expired at ``now``; returns how many were dropped."""
        heap, data = self._heap, self._data
        dropped = 0
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            item = data.get(key)
            # Only if the entry is the one this heap item was pushed for (not re-put later).
            if item is not None and item[1] == at:
                del data[key]
                dropped += 1
        return dropped

    def get(self, key: K, now: float) -> V | None:
        """The live value for ``key`` (and mark it most recently used), else ``None``."""
        self.purge(now)
        item = self._data.get(key)
        if item is None:
            return None
        if now >= item[1]:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, expires_at: float) -> None:
        """Store ``value`` until ``expires_at``, evicting the least recently used on overflow."""
        if self.maxsize == 0:
            return
        data = self._data
        data[key] = (value, expires_at)
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)
        heapq.heappush(self._heap, (expires_at, next(self._seq), key))
        if len(self._heap) > self.maxsize + self.maxsize // _COMPACT_SLACK + 64:
            seq = self._seq
            self._heap = [(at, next(seq), k) for k, (_, at) in data.items()]
            heapq.heapify(self._heap)

    def discard(self, key: K) -> None:
        """Forget ``key`` if present."""
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """The keys held (expired ones not yet purged included), least recently used first."""
        return iter(self._data)

    def items(self, now: float) -> list[tuple[K, V, float]]:
        """The live entries as ``(key, value, expires_at)``, least recently used first (a copy:
        putting them into another cache in this order keeps their relative recency)."""
        return [(k, v, exp) for k, (v, exp) in self._data.items() if now < exp]
