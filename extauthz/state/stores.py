"""Redis implementations of the HMAC replay cache and the brute-force limiter.

Keys (``P`` = ``settings.redis.key_prefix``, ``A`` = the authenticator's name)::

    P nonce:A:<sha256(keyid NUL nonce), 32 hex>   string, expires with the signature's window
    P attempts:A:user:<sha256(user), 32 hex>      sorted set of failure times (ms)
    P attempts:A:addr:<source address>            sorted set of failure times (ms)

Both are one round trip per operation, atomic (a Lua script), and safe to retry — redis-py
retries once after a connection error, and a command that reached Redis before the connection
broke must not be counted twice:

* nonce: ``remember`` stores a random token with ``SET … PX`` only if the key is absent, and a
  retry that finds *its own* token reports "new" rather than "replayed".
* attempts: each failure is a sorted-set member with a unique name, so adding it twice is one
  failure.

Times: the nonce's lifetime is sent relative (``PX`` = ``expires_at - now``), so replicas need
no clock agreement with Redis. The limiter scores failures with the replica's own clock (the same
sliding log as :class:`~extauthz.authn.attempts.InMemoryAttemptLimiter`: a key is blocked while
it has ``max_failures`` failures within ``window_seconds``, until the oldest leaves the window);
replicas' clocks should agree to within a second, as NTP keeps them.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from extauthz.authn.nonces import NonceStoreUnavailable
from extauthz.clock import Clock
from extauthz.state.base import SharedStateUnavailable
from extauthz.state.redis import RedisClient

#: KEYS[1] nonce key; ARGV[1] random token, ARGV[2] lifetime in ms. 1 = new, 0 = replay.
NONCE_SCRIPT = """
local seen = redis.call('GET', KEYS[1])
if not seen then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if seen == ARGV[1] then
  return 1
end
return 0
"""

#: KEYS[1] attempts key; ARGV[1] '(' .. window start (ms, exclusive), ARGV[2] max failures,
#: ARGV[3] now (ms). Returns ms until the key may try again (0 = now). Read-only.
CHECK_SCRIPT = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #live == 0 then
  return 0
end
if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') < tonumber(ARGV[2]) then
  return 0
end
local since = tonumber(string.sub(ARGV[1], 2))
return math.max(1, tonumber(live[2]) - since)
"""

#: KEYS[1] attempts key; ARGV[1] now (ms), ARGV[2] unique member, ARGV[3] window start (ms,
#: inclusive: older failures are dropped), ARGV[4] max failures kept, ARGV[5] key TTL (ms).
RECORD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
local keep = tonumber(ARGV[4])
if n > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
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
    """An :class:`~extauthz.authn.attempts.AttemptLimiter` shared by every replica.

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
        clock: Clock,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be >= 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self._client = client
        self._prefix = f"{prefix}attempts:"
        self.max_failures = max_failures
        self._window_ms = max(1, math.ceil(window_seconds * 1000))
        self._clock = clock

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def check(self, key: str) -> int:
        now_ms = math.floor(self._clock() * 1000)
        since = f"({now_ms - self._window_ms}"
        script = self._client.script(CHECK_SCRIPT)
        name = self._key(key)
        wait_ms = await self._client.run(
            "attempts",
            lambda r: script(keys=[name], args=[since, self.max_failures, now_ms], client=r),
        )
        wait = int(wait_ms)
        return 0 if wait <= 0 else max(1, math.ceil(wait / 1000))

    async def record_failure(self, key: str) -> None:
        now_ms = math.floor(self._clock() * 1000)
        member = f"{now_ms}:{secrets.token_hex(6)}"
        script = self._client.script(RECORD_SCRIPT)
        name = self._key(key)
        args: list[str | int] = [
            now_ms, member, now_ms - self._window_ms, self.max_failures, self._window_ms + 1000
        ]
        await self._client.run("attempts", lambda r: script(keys=[name], args=args, client=r))

    async def reset(self, key: str) -> None:
        name = self._key(key)
        await self._client.run("attempts", lambda r: r.delete(name))
