"""Replay protection: remember each nonce until the signature that carried it can no longer be
accepted anyway.

:class:`NonceStore` is the interface (async, so a shared store such as Redis can implement it with
``SET key 1 NX EXAT expires_at``); :class:`MemoryNonceStore` is the bounded in-process default.

Callers record a nonce only **after** the signature carrying it verified, so only holders of a key
can add entries, and each entry lives only until ``expires_at`` (the end of the signature's
acceptance window: created + max age + clock skew, or expires + skew).

When the memory store is full of live entries it **refuses** new nonces
(:class:`NonceStoreFull`) instead of evicting live ones: evicting would re-open a replay window
for the evicted nonce, which is exactly what the store exists to close. The authenticator turns
that into a fail-closed 503; size the store for (requests per second with a nonce) x (window).
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Protocol, runtime_checkable

from extauthz.clock import Clock


class NonceStoreFull(Exception):
    """The store cannot remember another nonce right now (fail closed)."""


class NonceStoreUnavailable(Exception):
    """A remote store could not be reached (for implementations other than the memory one)."""


@runtime_checkable
class NonceStore(Protocol):
    """Remembers keys until an absolute time."""

    async def remember(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``.

        Returns True if the key was new (now recorded), False if it is already recorded and not
        yet expired (a replay). Raises :class:`NonceStoreFull` or
        :class:`NonceStoreUnavailable` when it cannot decide; callers must then refuse.
        """
        ...

    async def close(self) -> None:
        """Release resources."""
        ...


class MemoryNonceStore:
    """A bounded in-memory :class:`NonceStore` for one process.

    Keys are stored as 16-byte BLAKE2b digests (so a long nonce costs no more memory than a short
    one). Expired entries are purged in expiry order with a heap, amortised O(log n) per call.
    Single event loop: ``remember`` does not await, so check-and-set is atomic.
    """

    def __init__(self, max_entries: int, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()

    def _purge(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            at, digest = heapq.heappop(heap)
            # The dict may hold a newer expiry for a key that was re-recorded after expiring.
            if expiry.get(digest) == at:
                del expiry[digest]

    async def remember(self, key: str, expires_at: float) -> bool:
        return self.remember_now(key, expires_at)

    def remember_now(self, key: str, expires_at: float) -> bool:
        """Synchronous :meth:`remember` (same contract)."""
        now = self._clock()
        self._purge(now)
        digest = self._digest(key)
        current = self._expiry.get(digest)
        if current is not None and current > now:
            return False
        if expires_at <= now:
            # Already outside its window: nothing to remember (the caller's time checks would
            # refuse such a signature anyway).
            return True
        if len(self._expiry) >= self.max_entries:
            raise NonceStoreFull("nonce store full")
        self._expiry[digest] = expires_at
        heapq.heappush(self._heap, (expires_at, digest))
        return True

    def rebind_clock(self, clock: Clock) -> None:
        """Use ``clock`` from now on (when a reloaded authenticator takes this store over)."""
        self._clock = clock

    def __len__(self) -> int:
        return len(self._expiry)

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()
