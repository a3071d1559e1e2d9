"""Redis implementations of the HMAC replay cache and the brute-force limiter.

Keys (``P`` = ``settings.redis.key_prefix``, ``A`` = the authenticator's name)::

    P nonce:A:<sha256(keyid NUL nonce), 32 hex>   string, expires with the signature's window
    P attempts:A:user:<sha256(user), 32 hex>      integer counter, expires window_seconds after
    P attempts:A:addr:<source address>            the first failure of its window

One round trip per operation, atomic on the server:

* nonce: ``SET key token NX PX lifetime`` (set-if-absent with expiry). It runs in a tiny Lua
  script so that it is also safe to *retry*: redis-py retries a command once after a connection
  error, and a ``SET NX`` that reached Redis before the connection broke would otherwise make the
  retry report its own nonce as replayed. The script answers "new" when the key holds this call's
  random token.
* attempts: ``INCR`` and, when the counter was just created, ``PEXPIRE window`` — in one script,
  so a counter never lives without its expiry. A key is blocked while its counter is at
  ``max_failures`` or more, until the counter expires (a fixed window that opens at the first
  failure; Retry-After = the counter's remaining TTL). A retried ``INCR`` may count one failure
  twice: the error is on the safe side. ``check`` is ``GET`` + ``PTTL`` in one transaction;
  ``reset`` is ``DEL``.

Times are sent relative (``PX`` = ``expires_at - now``, ``PEXPIRE`` = the window), so replicas
need no clock agreement with Redis. Scripts are loaded with ``SCRIPT LOAD`` semantics by redis-py
(``EVALSHA``, re-sent after a Redis restart emptied the script cache).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import TYPE_CHECKING, Any

from extauthz.authn.nonces import NonceStoreUnavailable
from extauthz.clock import Clock
from extauthz.state.base import SharedStateUnavailable
from extauthz.state.redis import RedisClient

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: KEYS[1] nonce key; ARGV[1] random token, ARGV[2] lifetime in ms. 1 = new, 0 = replay.
NONCE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
"""

#: KEYS[1] attempts counter; ARGV[1] window in ms. Returns the new count.
RECORD_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class RedisNonceStore:
    """A :class:`~extauthz.authn.nonces.NonceStore` shared by every replica."""

    def __init__(self, client: RedisClient, *, prefix: str, owner: str, clock: Clock) -> None:
        self._client = client
        self._prefix = f"{prefix}nonce:{owner}:"
        self._clock = clock

    async def remember(self, key: str, expires_at: float) -> bool:
        ttl_ms = math.ceil((expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return True  # already outside its window (as the memory store answers)
        name = self._prefix + _digest(key)
        token = secrets.token_hex(8)
        try:
            script = self._client.script(NONCE_SCRIPT)
            fresh = await self._client.run(
                "nonce", lambda r: script(keys=[name], args=[token, ttl_ms], client=r)
            )
        except SharedStateUnavailable as exc:
            raise NonceStoreUnavailable(exc.detail or "Redis unavailable") from None
        return int(fresh) == 1

    async def close(self) -> None:
        return None  # the client belongs to the StateHub


class RedisAttemptLimiter:
    """An :class:`~extauthz.authn.attempts.AttemptLimiter` shared by every replica
    (``INCR`` + expiry; module docstring).

    Failures raise :class:`~extauthz.state.base.SharedStateUnavailable` (503): the limiter
    cannot tell whether the key is blocked, so the attempt is refused before any password work.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        max_failures: int,
        window_seconds: float,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be >= 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self._client = client
        self._prefix = f"{prefix}attempts:"
        self.max_failures = max_failures
        self._window_ms = max(1, math.ceil(window_seconds * 1000))

    def key(self, key: str) -> str:
        """The Redis key of limiter key ``key``."""
        return self._prefix + key

    async def check(self, key: str) -> int:
        name = self.key(key)

        async def call(redis: Redis) -> list[Any]:
            pipe = redis.pipeline(transaction=True)
            pipe.get(name)
            pipe.pttl(name)
            result: list[Any] = await pipe.execute()
            return result

        raw_count, ttl_ms = await self._client.run("attempts", call)
        count = int(raw_count) if raw_count is not None else 0
        if count < self.max_failures:
            return 0
        ttl = int(ttl_ms)
        if ttl < 0:  # no expiry (cannot happen through record_failure): a whole window
            ttl = self._window_ms
        return max(1, math.ceil(ttl / 1000))

    async def record_failure(self, key: str) -> None:
        script = self._client.script(RECORD_SCRIPT)
        name = self.key(key)
        window = self._window_ms
        await self._client.run("attempts", lambda r: script(keys=[name], args=[window], client=r))

    async def reset(self, key: str) -> None:
        name = self.key(key)
        await self._client.run("attempts", lambda r: r.delete(name))
