"""Replay protection: remember each nonce until no live or future configuration could accept the
signature that carried it.

:class:`NonceStore` is the interface (async, so the Redis store of :mod:`extauthz.state.stores`
implements it too); :class:`MemoryNonceStore` is the in-process default. Both keep nonces per
*scope* = the signing key's stable identity (key id + a fingerprint of its secret, see
:func:`key_scope`), not per authenticator, so renaming an authenticator forgets nothing, and both
decide how long to keep a nonce with :class:`~extauthz.authn.replay_window.WindowHistory` (a
reload that widens ``max_age_seconds`` / ``max_skew_seconds`` cannot re-open a replay window).

Callers record a nonce only **after** the signature carrying it verified, so only holders of a key
can add entries.

Each scope holds at most ``share`` live nonces (the per-key share of the cache): a full scope
**refuses** new nonces (:class:`NonceStoreFull`, a fail-closed 503 for that key only) instead of
evicting live ones — evicting would re-open a replay window for the evicted nonce, which is exactly
what the store exists to close — and one key holder cannot fill the cache for the others.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Protocol, runtime_checkable

from extauthz.authn.replay_window import NonceUse, WindowHistory
from extauthz.clock import Clock

__all__ = [
    "ExpiringSet",
    "MemoryNonceStore",
    "NonceStore",
    "NonceStoreFull",
    "NonceStoreUnavailable",
    "NonceTooOld",
    "NonceUse",
    "key_scope",
]


class NonceStoreFull(Exception):
    """The store cannot remember another nonce for this key right now (fail closed)."""


class NonceStoreUnavailable(Exception):
    """A remote store could not be reached (for implementations other than the memory one)."""


class NonceTooOld(Exception):
    """The store cannot vouch that this signature's nonce was never used: it was made before
    the acceptance window was widened (and is past the narrower one), or before the shared
    store lost its data. The message says which; the caller refuses (401)."""


def key_scope(key_id: str, secret: bytes) -> str:
    """The stable scope of a signing key: its id and a fingerprint of its secret (the secret
    itself never leaves the process; a new secret under the same id is a new scope)."""
    digest = hashlib.sha256(b"extauthz-nonce-scope\x00" + key_id.encode("utf-8", "surrogateescape")
                            + b"\x00" + secret).hexdigest()
    return digest[:32]


@runtime_checkable
class NonceStore(Protocol):
    """Remembers nonces per signing key (module docstring)."""

    async def remember(self, use: NonceUse) -> bool:
        """Record ``use.nonce`` in ``use.scope``.

        Returns True if the nonce was new (now recorded), False if it was recorded before and
        may still be live (a replay). Raises :class:`NonceTooOld`, :class:`NonceStoreFull` or
        :class:`NonceStoreUnavailable` when it cannot accept it; callers must then refuse.
        """
        ...

    async def close(self) -> None:
        """Release resources."""
        ...


class ExpiringSet:
    """A bounded in-memory set of keys that each expire at an absolute time.

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
        # An entry is live up to and including its expiry: the signature checks accept a
        # signature at exactly the end of its window (`now > end` is expired), so its nonce must
        # still be there then.
        while heap and heap[0][0] < now:
            at, digest = heapq.heappop(heap)
            # The dict may hold a newer expiry for a key that was re-recorded after expiring.
            if expiry.get(digest) == at:
                del expiry[digest]

    async def remember(self, key: str, expires_at: float) -> bool:
        return self.remember_now(key, expires_at)

    def remember_now(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``: True if new, False if live already (a replay);
        :class:`NonceStoreFull` when ``max_entries`` live keys are held."""
        now = self._clock()
        self._purge(now)
        digest = self._digest(key)
        current = self._expiry.get(digest)
        if current is not None and current >= now:
            return False
        if expires_at < now:
            # Already outside its window: nothing to remember (the caller's time checks would
            # refuse such a signature anyway).
            return True
        if len(self._expiry) >= self.max_entries:
            raise NonceStoreFull("nonce store full")
        self._expiry[digest] = expires_at
        heapq.heappush(self._heap, (expires_at, digest))
        return True

    def rebind_clock(self, clock: Clock) -> None:
        """Use ``clock`` from now on."""
        self._clock = clock

    def __len__(self) -> int:
        return len(self._expiry)

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()


class MemoryNonceStore:
    """The in-process :class:`NonceStore`: one :class:`ExpiringSet` (bounded by the scope's
    share) and one :class:`~extauthz.authn.replay_window.WindowHistory` per scope.

    One instance per process when the server runs it (:mod:`extauthz.state.local`), so reloads
    and renames keep every nonce. Scopes are signing keys: their number is bounded by the
    configuration, and a scope's entries leave with their expiry.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._scopes: dict[str, tuple[ExpiringSet, WindowHistory]] = {}

    async def remember(self, use: NonceUse) -> bool:
        return self.remember_now(use)

    def remember_now(self, use: NonceUse) -> bool:
        """Synchronous :meth:`remember` (same contract)."""
        now = self._clock()
        found = self._scopes.get(use.scope)
        if found is None:
            found = (ExpiringSet(use.share, self._clock), WindowHistory())
            self._scopes[use.scope] = found
        entries, history = found
        entries.max_entries = use.share  # a reload may change the share
        accept_until, retain_until = history.plan(use, now)
        if now > accept_until:
            raise NonceTooOld("signed before the replay window was widened")
        return entries.remember_now(use.nonce, retain_until)

    def rebind_clock(self, clock: Clock) -> None:
        """Use ``clock`` from now on (when a reloaded authenticator takes this store over; on
        the event loop)."""
        self._clock = clock
        for entries, _ in self._scopes.values():
            entries.rebind_clock(clock)

    def scope_size(self, scope: str) -> int:
        """Live-or-not-yet-purged nonces of ``scope`` (for tests and metrics)."""
        found = self._scopes.get(scope)
        return len(found[0]) if found is not None else 0

    def __len__(self) -> int:
        return sum(len(entries) for entries, _ in self._scopes.values())

    async def close(self) -> None:
        for entries, _ in self._scopes.values():
            await entries.close()
        self._scopes.clear()
