"""One outbound target (a PDP or a lookup): its session, cache, deadline and metrics.

Every call goes through :class:`extauthz.outbound.OutboundPolicy` (https off loopback, no
redirect for a POST, CA bundle, proxies, response size) and is bounded by the target's
``timeout_seconds`` as a whole: waiting for a concurrency slot, a shared in-flight call, PDP
discovery and the exchange itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from extauthz.config.external import CallLimits
from extauthz.external.cache import CallCache, CallFailed
from extauthz.external.metrics import ExternalMetrics
from extauthz.outbound import OutboundError, OutboundPolicy


class Target:
    """Shared plumbing of :class:`~extauthz.external.authzen.Pdp` and lookups."""

    kind = "target"

    def __init__(self, name: str, limits: CallLimits, policy: OutboundPolicy,
                 metrics: ExternalMetrics) -> None:
        self.name = name
        self.limits = limits
        self.policy = policy
        self.metrics = metrics
        self.cache = CallCache(
            self.kind, name, ttl=limits.cache_ttl_seconds,
            negative_ttl=limits.negative_ttl_seconds, max_entries=limits.max_entries,
            max_concurrency=limits.max_concurrency, metrics=metrics,
            slot_timeout=limits.timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def adopt_cache(self, previous: Target) -> None:
        """Take over ``previous``'s cached answers (its in-flight calls stay its own)."""
        self.cache.adopt(previous.cache)

    def session(self) -> aiohttp.ClientSession:
        """The target's HTTP session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            self._session = self.policy.session(self.limits.timeout_seconds,
                                                limit=self.limits.max_concurrency)
        return self._session

    async def cached(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call``'s answer for ``key`` under the cache, all within the target's deadline."""
        found, value = self.cache.cached(key)
        if found:
            return value
        try:
            # wait_for, not asyncio.timeout(): the HTTP transport may run a check outside an
            # asyncio task, where asyncio.timeout() raises RuntimeError (a miss pays one task)
            return await asyncio.wait_for(self.cache.get(key, call), self.limits.timeout_seconds)
        except TimeoutError:
            self.metrics.call(self.kind, self.name, "timeout", self.limits.timeout_seconds)
            raise CallFailed("timeout", f"{self.kind} {self.name}: timed out") from None

    async def exchange(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                       body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or None) of one call; raises :class:`CallFailed`.

        Counted in ``extauthz_external_calls_total`` by result (the caller recounts an
        ``ok`` it later finds invalid).
        """
        started = time.monotonic()
        send: dict[str, str] = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            send["content-type"] = "application/json"
        send.setdefault("accept", "application/json")
        try:
            status, raw = await self.policy.fetch(
                self.session(), method, url, timeout=self.limits.timeout_seconds,
                max_bytes=self.limits.max_response_bytes, headers=send, data=data)
        except OutboundError as exc:
            self.metrics.call(self.kind, self.name, exc.result, time.monotonic() - started)
            raise CallFailed(exc.result, f"{self.kind} {self.name}: {exc}") from None
        elapsed = time.monotonic() - started
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        result = "ok" if 200 <= status < 300 else ("not_found" if status == 404 else "error")
        self.metrics.call(self.kind, self.name, result, elapsed)
        return status, parsed

    def fail(self, result: str, message: str) -> CallFailed:
        """A :class:`CallFailed` for an answer found unusable after the exchange."""
        self.metrics.call(self.kind, self.name, result, 0.0)
        return CallFailed(result, f"{self.kind} {self.name}: {message}")

    async def close(self) -> None:
        """Close the session (errors are not raised: closing must finish)."""
        if self._session is not None and not self._session.closed:
            with contextlib.suppress(Exception):  # best effort at shutdown
                await self._session.close()
