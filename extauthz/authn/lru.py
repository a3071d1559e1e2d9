"""A small bounded LRU cache whose entries expire at an absolute time.

Single-threaded by design (the server runs on one asyncio loop); every operation is O(1). Expired
entries are dropped when they are looked up or when they reach the cold end of the LRU order, so
the cache never holds more than ``maxsize`` entries. ``maxsize = 0`` disables it: ``put`` stores
nothing and ``get`` always misses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """Bounded LRU map from ``K`` to ``V``; each entry is valid while ``now < expires_at``."""

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        """The live value for ``key`` (and mark it most recently used), else ``None``."""
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

    def discard(self, key: K) -> None:
        """Forget ``key`` if present."""
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def items(self, now: float) -> list[tuple[K, V, float]]:
        """The live entries as ``(key, value, expires_at)``, least recently used first (a copy:
        putting them into another cache in this order keeps their relative recency)."""
        return [(k, v, exp) for k, (v, exp) in self._data.items() if now < exp]
