"""TTL cache + negative cache + single-flight + bounded concurrency for one outbound target.

Every PDP and every metadata lookup owns one :class:`CallCache`. ``get(key, call)``:

1. a fresh cached answer is returned (``hit``); a remembered failure re-raises at once
   (``negative_hit``) so a failing service is not asked again by every request;
2. otherwise, if a call for the same key is already in flight, the caller waits for it
   (``shared``): N concurrent requests for one key make one outbound call (single-flight);
3. otherwise the call runs (``miss``) once a concurrency slot is free (``max_concurrency``).

The caller bounds the whole wait with its own deadline; a waiter that gives up does not cancel
the shared call (it is shielded), so the next request still benefits from its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from extauthz.external.metrics import ExternalMetrics

#: every this many stored answers, expired ones are swept (one O(entries) pass per 256 stores)
_SWEEP_EVERY = 256


class CallFailed(Exception):
    """The outbound call failed; ``result`` is a bounded metrics label (timeout, error, ...)."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


class CallCache:
    """See the module docstring. ``kind`` is ``pdp`` or ``lookup``; ``name`` its config name."""

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        max_concurrency: int,
        metrics: ExternalMetrics,
        clock: Callable[[], float] = time.monotonic,
        slot_timeout: float | None = None,
    ) -> None:
        self.kind, self.name = kind, name
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bool, Any]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._slots = asyncio.Semaphore(max_concurrency)
        self._stores = 0
        #: how long a call may wait for a slot: past it, the callers have given up anyway, and
        #: a hung service must not let queued calls pile up without bound
        self.slot_timeout = slot_timeout
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._entries)

    def _count(self, result: str) -> None:
        self._metrics.cache(self.kind, self.name, result)

    def cached(self, key: str) -> tuple[bool, Any]:
        """(True, answer) for a fresh cached answer (a remembered failure raises it again),
        (False, None) otherwise. Synchronous: the hot path of a hit never suspends."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, ok, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return False, None
        self._count("hit" if ok else "negative_hit")
        if ok:
            return True, value
        raise CallFailed(value[0], value[1])

    async def get(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """The answer for ``key``: cached, shared with a call in flight, or fetched now."""
        found, value = self.cached(key)
        if found:
            return value
        running = self._inflight.get(key)
        if running is not None:
            self._count("shared")
            return await asyncio.shield(running)
        self._count("miss")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        task = asyncio.ensure_future(self._run(key, call, future))
        del task  # the future carries the result; the task finishes on its own
        return await asyncio.shield(future)

    async def _run(self, key: str, call: Callable[[], Awaitable[Any]],
                   future: asyncio.Future[Any]) -> None:
        try:
            try:
                async with asyncio.timeout(self.slot_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                self._count("overloaded")
                future.set_exception(CallFailed("overloaded", f"{self.kind} {self.name}: "
                                                "every concurrency slot stayed busy"))
                return
            try:
                value = await call()
            finally:
                self._slots.release()
        except CallFailed as exc:
            self._store(key, self.negative_ttl, False, (exc.result, str(exc)))
            future.set_exception(exc)
        except BaseException as exc:  # never leave waiters hanging
            future.set_exception(CallFailed("error", type(exc).__name__))
        else:
            # a None answer (a lookup's 404) is remembered like a failure: the negative cache
            self._store(key, self.negative_ttl if value is None else self.ttl, True, value)
            future.set_result(value)
        finally:
            self._inflight.pop(key, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "exception never retrieved" warning

    def _store(self, key: str, ttl: float, ok: bool, value: Any) -> None:
        if ttl <= 0:
            return
        entries = self._entries
        entries[key] = (self._clock() + ttl, ok, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        self._stores += 1
        if self._stores % _SWEEP_EVERY == 0:
            # answers for keys never asked again would otherwise stay until max_entries pushes
            # them out: memory follows the live answers, not the busiest minute so far
            self.evict_expired()

    def adopt(self, previous: CallCache) -> None:
        """Copy ``previous``'s live entries (oldest first, so recency is kept)."""
        now = self._clock()
        for key, entry in previous._entries.items():
            if entry[0] > now:
                self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def evict_expired(self) -> None:
        """Drop expired entries (called now and then so memory levels off)."""
        now = self._clock()
        for key in [k for k, (exp, _, _) in self._entries.items() if exp <= now]:
            del self._entries[key]
