"""Redis implementations of the HMAC replay cache and the brute-force limiter.

Keys (``P`` = ``settings.redis.key_prefix``, ``S`` = a signing key's scope: sha256 of its id
and secret, see :func:`extauthz.authn.nonces.key_scope`)::

    P nonce:{S}:<sha256(nonce), 32 hex>     string (a random token), kept until the signature
                                            can no longer be accepted by any configuration seen
    P nonces:{S}                            ZSET of the scope's live nonces (the per-key share)
    P nonce-window:{S}                      the scope's window history (no expiry, ~30 bytes)
    P epoch                                 "<ms>-<random>": when this Redis's extauthz state
                                            began (whole seconds), unique per (re)creation
    P attempts:A:user:<sha256(user), 32 hex>   integer counter, expires window_seconds after
    P attempts:A:addr:<source address>         the first failure of its window (A = the Basic
                                               authenticator's name)

One round trip per operation, atomic on the server:

* nonce: one Lua script (:data:`NONCE_SCRIPT`) does what the memory store does
  (:mod:`extauthz.authn.replay_window`): records the configuration's window in the scope's history,
  refuses a signature made before a widening that it is now too old for (``NonceTooOld``) or made
  before the epoch (Redis lost its data then: its nonces are gone, so nothing older can be
  vouched for), answers "replay" for a live nonce, refuses a new one when the scope already holds
  ``share`` live nonces (``NonceStoreFull``: one key cannot fill Redis for the others), else
  stores it. It is safe to *retry*: redis-py retries a command once after a connection error, and
  the script answers "new" when the key holds this call's random token.
* attempts: ``reserve`` = ``GET``, then ``INCR`` (+ ``PEXPIRE window`` when new) unless the
  counter is at ``max_failures`` — in one script, so a counter never lives without its expiry and
  concurrent attempts cannot all pass the check. A key is blocked while its counter is at
  ``max_failures`` or more, until the counter expires (a fixed window that opens at the first
  failure; Retry-After = the counter's remaining TTL). A retried call may count one attempt
  twice: the error is on the safe side. ``release`` gives one back (``DECR``, never below 0),
  ``check`` is ``GET`` + ``PTTL`` in one transaction; ``reset`` is ``DEL``.

Expiries are sent relative (``PX`` = ``retain_until - now``, ``PEXPIRE`` = the window) and the
share set is scored in Redis's own ``TIME``, so replicas need no clock agreement with Redis (they
need it with the signers anyway: ``created`` is checked against their clocks).
Scripts are loaded with ``SCRIPT LOAD`` semantics by redis-py
(``EVALSHA``, re-sent after a Redis restart emptied the script cache).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import TYPE_CHECKING, Any

from extauthz.authn.nonces import NonceStoreFull, NonceStoreUnavailable, NonceTooOld, NonceUse
from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.clock import Clock
from extauthz.state.redis import RedisClient

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Replay check, per-key share, window history and data-loss guard in one atomic step.
#: KEYS: 1 the nonce, 2 the scope's share set (ZSET digest -> expiry in Redis time), 3 the scope's
#: window history, 4 the epoch. ARGV: 1 random token, 2 now (ms, replica clock), 3 created (ms
#: or ''), 4 expires (ms or ''), 5 max_age (ms), 6 skew (ms), 7 share, 8 the nonce's digest.
#: Returns 1 new, 0 replay, 2 signed before the window was widened, 3 signed before the epoch
#: (Redis lost its data then), 4 the scope's share is full.
#: The window arithmetic is extauthz.authn.replay_window's (history "since,age,skew;..." with
#: since -1 = from the beginning).
NONCE_SCRIPT = """
local now = tonumber(ARGV[2])
local created = tonumber(ARGV[3])
local expires = tonumber(ARGV[4])
local age = tonumber(ARGV[5])
local skew = tonumber(ARGV[6])
local raw_epoch = redis.call('GET', KEYS[4])
local epoch = raw_epoch and tonumber(string.match(raw_epoch, '^%d+'))
if not epoch then
  epoch = math.floor(now / 1000) * 1000
  redis.call('SET', KEYS[4], string.format('%.0f', epoch) .. '-' .. ARGV[1])
end
local steps = {}
local raw = redis.call('GET', KEYS[3])
if raw then
  for since, a, s in string.gmatch(raw, '([^,;]+),([^,;]+),([^,;]+)') do
    steps[#steps + 1] = {tonumber(since), tonumber(a), tonumber(s)}
  end
end
local changed = false
if #steps == 0 then
  steps[1] = {-1, age, skew}
  changed = true
else
  local last = steps[#steps]
  if age > last[2] or skew > last[3] then
    steps[#steps + 1] = {now, math.max(age, last[2]), math.max(skew, last[3])}
    if #steps > 32 then table.remove(steps, 2) end
    changed = true
  end
end
if changed then
  local out = {}
  for i = 1, #steps do
    out[i] = string.format('%.0f,%.0f,%.0f', steps[i][1], steps[i][2], steps[i][3])
  end
  redis.call('SET', KEYS[3], table.concat(out, ';'))
end
local amax = steps[#steps][2]
local smax = steps[#steps][3]
local function ends(a, s)
  local e = nil
  if created then e = created + a + s end
  if expires then
    local x = expires + s
    if not e or x < e then e = x end
  end
  return e
end
local born = created or (expires - amax)
if born < epoch then return 3 end
local first = created and (created - smax) or (expires - amax - smax)
local a_s = steps[1][2]
local s_s = steps[1][3]
for i = 1, #steps do
  if steps[i][1] <= first then
    a_s = steps[i][2]
    s_s = steps[i][3]
  end
end
if now > math.min(ends(age, skew), ends(a_s, s_s)) then return 2 end
local held = redis.call('GET', KEYS[1])
if held then
  if held == ARGV[1] then return 1 end
  return 0
end
local ttl = math.floor(ends(amax, smax) - now) + 1
if ttl < 1 then ttl = 1 end
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', rnow)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then return 4 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], rnow + ttl, ARGV[8])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

#: KEYS[1] attempts counter; ARGV[1] window in ms. Returns the new count.
RECORD_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""


#: KEYS[1] attempts counter; ARGV[1] window in ms, ARGV[2] max_failures. Blocked: minus the
#: counter's remaining ms (nothing counted); else counts one attempt and returns the new count.
RESERVE_SCRIPT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[2]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = tonumber(ARGV[1]) end
  return -math.max(ttl, 1)
end
n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""

#: KEYS[1] attempts counter: one attempt given back (never below zero).
RELEASE_SCRIPT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def epoch_key(prefix: str) -> str:
    """The key whose disappearance or change means Redis lost extauthz's data."""
    return f"{prefix}epoch"


def _ms(value: float | None) -> str:
    return "" if value is None else str(math.floor(value * 1000))


class RedisNonceStore:
    """A :class:`~extauthz.authn.nonces.NonceStore` shared by every replica (one script call:
    :data:`NONCE_SCRIPT`)."""

    def __init__(self, client: RedisClient, *, prefix: str, owner: str, clock: Clock) -> None:
        self._client = client
        self._prefix = prefix
        self._owner = owner  # for nothing but reading logs: nonces are scoped by key
        self._clock = clock

    def keys(self, scope: str, nonce: str) -> list[str]:
        """The four keys of :data:`NONCE_SCRIPT` for ``nonce`` of ``scope``. The scope is a
        hash tag, so a scope's keys would share one Redis Cluster slot."""
        p = self._prefix
        return [f"{p}nonce:{{{scope}}}:{_digest(nonce)}", f"{p}nonces:{{{scope}}}",
                f"{p}nonce-window:{{{scope}}}", epoch_key(p)]

    async def remember(self, use: NonceUse) -> bool:
        names = self.keys(use.scope, use.nonce)
        args: list[str | int] = [
            secrets.token_hex(8), _ms(self._clock()), _ms(use.created), _ms(use.expires),
            _ms(use.max_age), _ms(use.skew), use.share, names[0].rsplit(":", 1)[1],
        ]
        try:
            script = self._client.script(NONCE_SCRIPT)
            answer = int(await self._client.run(
                "nonce", lambda r: script(keys=names, args=args, client=r)
            ))
        except SharedStateUnavailable as exc:
            raise NonceStoreUnavailable(exc.detail or "Redis unavailable") from None
        if answer == 2:
            raise NonceTooOld("signed before the replay window was widened")
        if answer == 3:
            raise NonceTooOld("signed before Redis lost its data (replay protection restarted)")
        if answer == 4:
            raise NonceStoreFull("this key's share of the replay cache is full")
        return answer == 1

    async def close(self) -> None:
        return None  # the client belongs to the StateHub


class RedisAttemptLimiter:
    """An :class:`~extauthz.authn.attempts.AttemptLimiter` shared by every replica
    (``INCR`` + expiry; module docstring).

    Failures raise :class:`~extauthz.authn.shared_state.SharedStateUnavailable` (503): the limiter
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

    async def reserve(self, key: str) -> int:
        script = self._client.script(RESERVE_SCRIPT)
        name = self.key(key)
        args = [self._window_ms, self.max_failures]
        # A retried call (redis-py retries once after a connection error) may count twice: the
        # error is on the safe side.
        result = int(await self._client.run(
            "attempts", lambda r: script(keys=[name], args=args, client=r)
        ))
        if result >= 0:
            return 0
        return max(1, math.ceil(-result / 1000))

    async def release(self, key: str) -> None:
        script = self._client.script(RELEASE_SCRIPT)
        name = self.key(key)
        await self._client.run("attempts", lambda r: script(keys=[name], args=[], client=r))
