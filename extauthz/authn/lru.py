"""A small bounded LRU cache whose entries expire at an absolute time.

Single-threaded by design (the server runs on one asyncio loop). The cache never holds more than
``maxsize`` entries, and it does not keep **expired** entries either: every ``put`` and every
``get`` first sweeps the entries whose time has passed (amortised O(1) per entry, each swept
once). Without that, a stream of distinct credentials used once each (every new token of every
client) would fill the cache to ``maxsize`` with dead entries and keep it there. With it the cache
holds only the credentials seen within their lifetime (and at most ``maxsize``).
``maxsize = 0`` disables it: ``put`` stores nothing and ``get`` always misses.

The expiry index groups keys by their exact expiry time (expiry -> list of keys) with a min-heap
of the distinct expiries. Tokens carry ``exp`` in whole seconds, so the tokens of one issuer
minted in the same second share one list: one list slot (8 bytes) per entry instead of a heap
item per entry (a tuple, an int and a float: ~100 bytes, ~10 MiB per 100 000 cached tokens). An
entry renewed or evicted since it was indexed leaves its key behind, which the sweep skips (the
entry's own expiry decides) and which a rebuild drops once the index holds 25 % more keys than
the cache. Entries that never expire (``expires_at`` infinite) are not indexed.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: the expiry index is rebuilt from the live entries when it holds this many more keys than
#: ``maxsize`` (keys of entries evicted by the LRU bound or replaced stay in their bucket until it
#: is swept): at most 25 % extra keys, rebuilt in O(maxsize) every maxsize / 4 puts
_COMPACT_SLACK = 4


class TtlLru(Generic[K, V]):
    """Bounded LRU map from ``K`` to ``V``; each entry is valid while ``now < expires_at``."""

    __slots__ = ("_buckets", "_data", "_due", "_indexed", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        #: expiry -> the keys put with that expiry
        self._buckets: dict[float, list[K]] = {}
        #: the distinct expiries, a min-heap (one item per expiry, not per entry)
        self._due: list[float] = []
        #: keys held by the buckets together (live, renewed and evicted ones)
        self._indexed = 0

    def purge(self, now: float) -> int:
        """Drop every entry expired at ``now``; returns how many were dropped."""
        due, buckets, data = self._due, self._buckets, self._data
        dropped = 0
        while due and due[0] <= now:
            keys = buckets.pop(heapq.heappop(due))
            self._indexed -= len(keys)
            for key in keys:
                item = data.get(key)
                # Only if the entry is over (not renewed with a later expiry since).
                if item is not None and item[1] <= now:
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

    def put(self, key: K, value: V, expires_at: float, now: float | None = None) -> None:
        """Store ``value`` until ``expires_at``, evicting the least recently used on overflow;
        with ``now``, expired entries are swept first."""
        if self.maxsize == 0:
            return
        if now is not None:
            self.purge(now)
        data = self._data
        data[key] = (value, expires_at)
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)
        if expires_at != math.inf:
            self._index(key, expires_at)
            if self._indexed > self.maxsize + self.maxsize // _COMPACT_SLACK + 64:
                self._rebuild()

    def _index(self, key: K, expires_at: float) -> None:
        bucket = self._buckets.get(expires_at)
        if bucket is None:
            bucket = self._buckets[expires_at] = []
            heapq.heappush(self._due, expires_at)
        bucket.append(key)
        self._indexed += 1

    def _rebuild(self) -> None:
        """Re-index the live entries only (drops the keys of evicted and renewed entries)."""
        self._buckets.clear()
        self._due.clear()
        self._indexed = 0
        for key, (_, expires_at) in self._data.items():
            if expires_at != math.inf:
                self._index(key, expires_at)

    def discard(self, key: K) -> None:
        """Forget ``key`` if present."""
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
        self._buckets.clear()
        self._due.clear()
        self._indexed = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """The keys held (expired ones not yet purged included), least recently used first."""
        return iter(self._data)

    @property
    def indexed(self) -> int:
        """How many keys the expiry index holds (bounded: see ``_COMPACT_SLACK``)."""
        return self._indexed

    def items(self, now: float) -> list[tuple[K, V, float]]:
        """The live entries as ``(key, value, expires_at)``, least recently used first (a copy:
        putting them into another cache in this order keeps their relative recency)."""
        return [(k, v, exp) for k, (v, exp) in self._data.items() if now < exp]
