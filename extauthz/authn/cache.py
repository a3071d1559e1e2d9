"""One cache wrapper around any credential verifier (Authorino's "cache around any evaluator").

Every authenticator that remembers a verification (JWT, token introspection, mTLS, Basic) goes
through a :class:`CredentialCache`; it owns the rules they share, so they hold everywhere:

* **keyed by a digest of the credential, never the credential**: :func:`credential_key` is the
  SHA-256 of the parts (joined by NUL); an entry holds what the allow needs (an Identity and the
  like), not the token text. Basic passes its own keyed HMAC (a password is guessable from a plain
  hash).
* **an entry never outlives the credential nor the cache's ``max_ttl``**: a success is kept until
  ``min(its own end, now + max_ttl)`` (the token's ``exp`` + leeway, the certificate chain's
  ``notAfter``, ...); a refusal (``refused(value)`` true) for ``negative_ttl`` only — 0, the
  default, caches no refusal. Failures that raise (a bad signature, an endpoint that is down) are
  never cached.
* **expired entries are swept on every insert and lookup** (:class:`~extauthz.authn.lru.TtlLru`),
  so the cache holds only live credentials, at most ``size`` of them (LRU beyond).
* **hit/miss counted** in ``extauthz_cache_requests_total{cache=<label>}`` when a label is given
  (a disabled cache, ``size`` 0, counts nothing).
* **a hit can still be refused**: ``fresh(value)`` (e.g. "the key that verified this token is
  still published") is asked on every hit; a stale entry is dropped and counted as a miss.
* **concurrent misses of one credential share one verification** when ``coalesce`` is set (an
  introspection request): the verification runs as a task, shielded from the cancellation of
  any one caller, and its result is cached even when every caller has gone.

Per-request checks that depend on the request (certificate binding, revocation, principal rules)
stay in the authenticator and run on hits and misses alike.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, TypeVar

from extauthz.authn.lru import TtlLru
from extauthz.clock import Clock
from extauthz.metrics import Metrics

__all__ = ["CredentialCache", "Shared", "credential_key"]

V = TypeVar("V")
H = TypeVar("H")

#: what a verification returns: the value to cache and the credential's own end (None: none)
Verified = tuple[V, float | None]


def credential_key(*parts: str | bytes) -> bytes:
    """The cache key of a credential: SHA-256 of its parts joined by NUL (32 bytes; text is
    UTF-8 with lone surrogates kept, so any ``str`` hashes)."""
    if len(parts) == 1 and type(parts[0]) is str:  # the common case, on every check
        return hashlib.sha256(parts[0].encode("utf-8", "surrogatepass")).digest()
    digest = hashlib.sha256()
    for i, part in enumerate(parts):
        if i:
            digest.update(b"\0")
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
    return digest.digest()


class Shared(Generic[H]):
    """One object per distinct value among many cached entries: the scope set, the ``exp`` of
    the tokens minted in one second, an issuer URL... are held once instead of once per entry
    (tens of bytes each, per cached credential; docs/memory.md). Bounded: the table starts over
    when it holds ``limit`` values (sharing is an optimisation, never needed for correctness)."""

    __slots__ = ("_limit", "_table")

    def __init__(self, limit: int = 4096) -> None:
        self._table: dict[H, H] = {}
        self._limit = limit

    def __call__(self, value: H) -> H:
        table = self._table
        shared = table.get(value)
        if shared is None:
            if len(table) >= self._limit:
                table.clear()
            shared = table[value] = value
        return shared


def _never_refused(_value: object) -> bool:
    return False


class CredentialCache(Generic[V]):
    """Verified credentials by digest, with the TTL, metric and coalescing rules of the module
    docstring. Single-threaded (one asyncio loop), like the authenticators."""

    __slots__ = ("_clock", "_hit", "_inflight", "_lru", "_miss", "_refused", "max_ttl",
                 "negative_ttl")

    def __init__(
        self,
        size: int,
        *,
        clock: Clock,
        max_ttl: float = math.inf,
        negative_ttl: float = 0.0,
        refused: Callable[[V], bool] = _never_refused,
        metrics: Metrics | None = None,
        label: str = "",
        coalesce: bool = False,
    ) -> None:
        self._lru: TtlLru[bytes, V] = TtlLru(size)
        self._clock = clock
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._refused = refused
        self._hit = self._miss = None
        if metrics is not None and label and size > 0:
            self._hit = metrics.cache_requests.labels(cache=label, result="hit")
            self._miss = metrics.cache_requests.labels(cache=label, result="miss")
        self._inflight: dict[bytes, asyncio.Task[V]] | None = {} if coalesce else None

    # -- lookups -------------------------------------------------------------------------------

    def get(self, key: bytes, now: float, fresh: Callable[[V], bool] | None = None) -> V | None:
        """The cached value for ``key`` if live (and ``fresh`` accepts it), else None."""
        value = self._lru.get(key, now)
        if value is not None and fresh is not None and not fresh(value):
            self._lru.discard(key)
            value = None
        counter = self._miss if value is None else self._hit
        if counter is not None:
            counter.inc()
        return value

    def put(self, key: bytes, value: V, expires_at: float | None = None) -> float | None:
        """Keep ``value`` by the TTL rules (module docstring); returns until when (None: not
        kept)."""
        now = self._clock()
        until = self.bound(value, expires_at, now)
        if until is not None:
            self._lru.put(key, value, until, now)
        return until

    def bound(self, value: V, expires_at: float | None, now: float) -> float | None:
        """Until when ``value`` may be kept from ``now``: its end capped by the TTL of its
        kind (None: not at all)."""
        ttl = self.negative_ttl if self._refused(value) else self.max_ttl
        if ttl <= 0 or self._lru.maxsize == 0:
            return None
        until = now + ttl
        if expires_at is not None and expires_at < until:
            until = expires_at
        return until if until > now else None

    def through_sync(self, key: bytes, now: float, verify: Callable[[], Verified[V]],
                     fresh: Callable[[V], bool] | None = None) -> V:
        """The cached value, else ``verify()``'s (kept by the TTL rules). Exceptions pass."""
        value = self.get(key, now, fresh)
        if value is None:
            value, expires_at = verify()
            self.put(key, value, expires_at)
        return value

    async def through(self, key: bytes, now: float,
                      verify: Callable[[], Awaitable[Verified[V]]],
                      fresh: Callable[[V], bool] | None = None) -> V:
        """:meth:`through_sync` for an asynchronous verification, coalesced if configured."""
        value = self.get(key, now, fresh)
        if value is not None:
            return value
        inflight = self._inflight
        if inflight is None:
            value, expires_at = await verify()
            self.put(key, value, expires_at)
            return value
        task = inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._verify_and_keep(key, verify))
            inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        # shield: a cancelled check (Envoy gave up) must not cancel the shared verification.
        return await asyncio.shield(task)

    async def _verify_and_keep(self, key: bytes,
                               verify: Callable[[], Awaitable[Verified[V]]]) -> V:
        value, expires_at = await verify()
        self.put(key, value, expires_at)
        return value

    def _finished(self, key: bytes, task: asyncio.Task[V]) -> None:
        inflight = self._inflight
        if inflight is not None and inflight.get(key) is task:
            del inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" if all waiters left

    # -- lifecycle -----------------------------------------------------------------------------

    def adopt(self, old: CredentialCache[V]) -> None:
        """Take over the live entries of ``old`` (a reload), each capped by this cache's TTLs:
        nothing lives longer than either configuration allows."""
        for key, value, expires_at in old._lru.items(self._clock()):
            self.put(key, value, expires_at)

    def discard(self, key: bytes) -> None:
        """Forget ``key`` if present."""
        self._lru.discard(key)

    def cancel(self) -> None:
        """Cancel the verifications in flight (their callers get CancelledError); the entries
        stay (a reload's successor may :meth:`adopt` them)."""
        if self._inflight is not None:
            for task in list(self._inflight.values()):
                task.cancel()
            self._inflight.clear()

    def clear(self) -> None:
        """Forget every entry and cancel the verifications in flight."""
        self.cancel()
        self._lru.clear()

    @property
    def size(self) -> int:
        """The most entries kept (0: disabled)."""
        return self._lru.maxsize

    def __len__(self) -> int:
        return len(self._lru)

    def __iter__(self) -> Iterator[bytes]:
        """The keys held (digests), least recently used first."""
        return iter(self._lru)
