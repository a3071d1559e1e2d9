"""The Redis store: every replica's counts in one Redis (standalone or Redis Cluster).

One check of one limit is **one round trip**: ``EVALSHA`` of :data:`SCRIPT` (``EVAL`` once after
a Redis restart forgot the script). The script reads the limit's window TATs, decides with the
GCRA rule of :mod:`extauthz.ratelimit.gcra` and writes them back, atomically: Redis runs one
script at a time, so concurrent checks from any number of replicas are serialized exactly as if
one process had decided them in some order — the bound of the docs holds for the whole fleet,
with nothing over it. Time is Redis's own (``TIME``), so the replicas' clocks do not matter.

Keys: ``<prefix>{<limit>:<digest>}:<window policy name>`` where ``digest`` is a BLAKE2b-128 of
the key value (subjects and addresses never appear in Redis key names; the length is bounded).
The braces are a hash tag: every window of one limit's key lives in one cluster slot, which a
multi-key script needs on a Redis Cluster. Each key expires (``PX``) when its TAT passes, so
Redis holds only keys that still matter.

Failures: any error or a call over ``timeout_seconds`` raises :class:`StoreUnavailable`; after one,
calls fail at once for ``retry_interval_seconds`` (no check waits on a dead Redis), then the next
call tries again. redis-py retries a command once on a connection error: a script that ran but
whose answer was lost is then counted twice — more restrictive, never less.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from extauthz.ratelimit.gcra import Window
from extauthz.state.redis import RedisTarget, raise_if_cancelled

log = logging.getLogger("extauthz.ratelimit")

#: KEYS: one per window. ARGV: T and tau (microseconds) per window.
#: Returns {allowed (0|1), delay_1, ..., delay_n} as strings (delays in microseconds).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local starts = {}
local allowed = 1
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  starts[i] = tat
  if tat - now > tonumber(ARGV[2 * i]) then allowed = 0 end
end
local out = {tostring(allowed)}
for i = 1, n do
  local tat = starts[i]
  if allowed == 1 then
    tat = tat + tonumber(ARGV[2 * i - 1])
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[i + 1] = string.format('%d', tat - now)
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id


class StoreUnavailable(Exception):
    """Redis could not answer (down, timed out, refused); the limit's ``on_redis_error`` applies."""


def key_names(prefix: str, limit: str, key: str, windows: Sequence[Window]) -> list[str]:
    """The Redis keys of ``key`` under ``limit``: one per window (named by its policy, unique in
    the limit, so a reload that adds or reorders windows never reads another window's state),
    one hash slot for all."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return [f"{prefix}{{{limit}:{digest}}}:{w.policy}" for w in windows]


def script_args(windows: Sequence[Window]) -> list[int]:
    """ARGV of :data:`SCRIPT`: T and tau per window."""
    out: list[int] = []
    for w in windows:
        out.extend((w.interval_us, w.tolerance_us))
    return out


class RedisStore:
    """One Redis or Redis Cluster client for the rate limits of a snapshot."""

    def __init__(self, target: RedisTarget, *, cluster: bool, prefix: str,
                 retry_interval: float) -> None:
        self.target = target
        self.cluster = cluster
        self.prefix = prefix
        self.timeout = target.timeout_seconds
        self.retry_interval = retry_interval
        self._client: Any = None
        self._down_until = 0.0

    @property
    def up(self) -> bool:
        """False while calls fail at once after a failure."""
        return time.monotonic() >= self._down_until

    async def start(self) -> None:
        """Create the client on the running loop (connections open on first use)."""
        if self._client is not None:
            return
        kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "max_connections": self.target.max_connections,
        }
        if self.target.password is not None:
            kwargs["password"] = self.target.password
        if self.target.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = self.target.tls_ca_file
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            kwargs.pop("max_connections")
            self._client = RedisCluster.from_url(self.target.url, **kwargs)
        else:
            from redis.asyncio import BlockingConnectionPool, Redis

            pool = BlockingConnectionPool.from_url(self.target.url, timeout=self.timeout,
                                                   **kwargs)
            self._client = Redis(connection_pool=pool)

    async def close(self) -> None:
        """Close the connections (errors are logged, never raised)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:  # closing must finish
                log.warning("error while closing the rate-limit Redis client: %s",
                            type(exc).__name__)

    async def hit(self, limit: str, key: str, windows: Sequence[Window]) -> tuple[bool, list[int]]:
        """Count one request: (allowed, delays per window). Raises :class:`StoreUnavailable`."""
        [result] = await self.hit_many([(limit, key, windows)])
        if result is None:
            raise StoreUnavailable("redis unavailable")
        return result

    async def hit_many(
        self, items: Sequence[tuple[str, str, Sequence[Window]]]
    ) -> list[tuple[bool, list[int]] | None]:
        """Count one request against several limits: per item (allowed, delays), or None when
        Redis could not answer (the caller applies the limit's ``on_redis_error``).

        Standalone: one pipeline, **one round trip** for all of them. Cluster: the limits' keys
        hash to different slots (nodes), so one script per limit, sent concurrently.
        """
        client = self._client
        if client is None or time.monotonic() < self._down_until:
            return [None] * len(items)
        calls = [(key_names(self.prefix, limit, key, windows), script_args(windows))
                 for limit, key, windows in items]
        try:
            if asyncio.current_task() is not None:
                async with asyncio.timeout(self.timeout):
                    replies = await self._run(client, calls)
            else:
                # The HTTP transport steps a check's coroutine outside any task until it first
                # suspends; asyncio.timeout needs a task, wait_for makes one for the call.
                replies = await asyncio.wait_for(self._run(client, calls), self.timeout)
            return [(reply[0] in (b"1", "1"), [int(d) for d in reply[1:]]) for reply in replies]
        except Exception as exc:
            raise_if_cancelled()
            if self.up:
                log.warning("rate-limit Redis %s failed (%s); calls fail at once for %.1fs",
                            self.target.display, type(exc).__name__, self.retry_interval)
            self._down_until = time.monotonic() + self.retry_interval
            return [None] * len(items)

    async def _run(self, client: Any, calls: list[tuple[list[str], list[int]]]) -> list[Any]:
        if len(calls) == 1 or self.cluster:
            return list(await asyncio.gather(*(self._eval(client, k, a) for k, a in calls)))
        from redis.exceptions import NoScriptError

        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        replies = list(await pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # Redis forgot the script: send the source
                keys, args = calls[i]
                replies[i] = await client.eval(SCRIPT, len(keys), *keys, *args)
            elif isinstance(reply, Exception):
                raise reply
        return replies

    async def _eval(self, client: Any, keys: list[str], args: list[int]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:
            # first call, or Redis restarted / the cluster node changed: send the source once
            return await client.eval(SCRIPT, len(keys), *keys, *args)
