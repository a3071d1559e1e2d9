"""Revocation lists: JWT ids (``jti``) and API keys (``consumer/key_id``) that must be refused.

Two sources, both optional, checked together:

* **a file** (``settings.revocation_file``), one entry per line, works without Redis::

      # comments and blank lines are ignored
      jti 5f0c1c1e-9d43-4c44-b4a4-1b1f7c2a9e01 2030-01-01T00:00:00Z
      jti legacy-token-7
      key partner-a/key-1

  ``jti VALUE [UNTIL]`` / ``key CONSUMER/KEY_ID [UNTIL]``; ``UNTIL`` (RFC 3339 with a timezone,
  or POSIX seconds) ends the entry — give a token's ``exp`` so the file does not grow forever;
  without it the entry never ends. The file is read when the configuration is compiled and is
  watched like the configuration itself, so an edit (or ``extauthz revoke``, which appends)
  is in force on every replica that reads the file within about a second.

* **Redis** (``settings.redis.revocation: true``): sorted sets ``P revoked:jti`` and
  ``P revoked:key`` (member = the value, score = UNTIL in POSIX seconds, ``+inf`` = forever) and a
  counter ``P revoked:version`` that ``extauthz revoke`` increments. Every replica polls the
  counter every ``revocation_sync_seconds`` and re-reads the live entries when it changed, so a
  check is a dict lookup — never a round trip — and a revocation is in force everywhere within
  about one sync interval. While Redis cannot be reached a replica keeps enforcing the entries
  it has for ``revocation_max_stale_seconds``; after that, the checks that consult the lists
  (every API-key check, every JWT with a ``jti``) fail closed with 503
  ``shared_state_unavailable``, because a revocation made meanwhile could not be seen.

Values: a ``jti`` is 1-1024 characters without whitespace or control characters (a token whose
``jti`` has spaces cannot be revoked by id); consumer and key id follow the configuration's name
rules. ``jti`` values are global across issuers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.clock import Clock
from extauthz.metrics import Metrics
from extauthz.state.redis import RedisClient, cancel_requested, raise_if_cancelled, stop_task

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("extauthz.revocation")

Kind = Literal["jti", "key"]
KINDS: tuple[Kind, ...] = ("jti", "key")
FOREVER = math.inf
#: a larger revocation file is almost certainly the wrong file
MAX_FILE_BYTES = 16 * 1024 * 1024

_JTI = re.compile(r"[^\s\x00-\x1f\x7f]{1,1024}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_EMPTY: Mapping[str, float] = MappingProxyType({})


# ------------------------------------------------------------------------------ values


def check_value(kind: Kind, value: str) -> str:
    """Validate a ``jti`` or a ``consumer/key_id``; returns it. ``ValueError`` says why."""
    if kind == "jti":
        if not _JTI.match(value):
            raise ValueError("a jti is 1-1024 characters without whitespace or control characters")
        return value
    consumer, sep, key_id = value.partition("/")
    if not sep or not _NAME.match(consumer) or not _NAME.match(key_id):
        raise ValueError("expected CONSUMER/KEY_ID (names as in the configuration)")
    return value


def parse_until(text: str) -> float:
    """``UNTIL``: RFC 3339 with a timezone (``2030-01-01T00:00:00Z``) or POSIX seconds."""
    if text.isdigit():
        return float(int(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text[:40]!r} (RFC 3339 with a timezone, or "
                         "POSIX seconds)") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no timezone (e.g. 2030-01-01T00:00:00Z)")
    return parsed.timestamp()


def format_until(until: float) -> str:
    return datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ the file


@dataclass(frozen=True, slots=True)
class RevocationEntries:
    """Entries read from a file: value -> until (POSIX seconds; ``inf`` = forever)."""

    jti: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    keys: Mapping[str, float] = field(default_factory=lambda: _EMPTY)


def parse_revocation_text(text: str) -> RevocationEntries:
    """Parse the file format (module docstring); ``ValueError`` names the first bad line."""
    found: dict[Kind, dict[str, float]] = {"jti": {}, "key": {}}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        kind = fields[0]
        if kind not in KINDS or len(fields) not in (2, 3):
            raise ValueError(f"line {number}: expected 'jti VALUE [UNTIL]' or "
                             "'key CONSUMER/KEY_ID [UNTIL]'")
        try:
            value = check_value(kind, fields[1])
            until = parse_until(fields[2]) if len(fields) == 3 else FOREVER
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        table = found[kind]
        table[value] = max(until, table.get(value, -math.inf))
    return RevocationEntries(
        jti=MappingProxyType(found["jti"]), keys=MappingProxyType(found["key"])
    )


def load_revocation_file(path: Path) -> RevocationEntries:
    """Read and parse ``path``; ``ValueError`` names the file problem or the bad line."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return parse_revocation_text(text)


def format_line(kind: Kind, value: str, until: float = FOREVER) -> str:
    check_value(kind, value)
    return f"{kind} {value}" + ("" if math.isinf(until) else f" {format_until(until)}")


def append_revocation(path: Path, kind: Kind, value: str, until: float = FOREVER) -> None:
    """Append one entry (one ``write`` on an ``O_APPEND`` descriptor: concurrent appends by two
    operators do not interleave). Creates the file when it does not exist."""
    line = format_line(kind, value, until) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            # Keep the new entry on a line of its own if the file does not end with a newline.
            with open(path, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ Redis


def redis_keys(prefix: str) -> tuple[str, str, str]:
    """(jti set, key set, version counter) under ``prefix``."""
    return f"{prefix}revoked:jti", f"{prefix}revoked:key", f"{prefix}revoked:version"


async def revoke_in_redis(
    client: RedisClient, prefix: str, kind: Kind, value: str, until: float, now: float
) -> None:
    """Add one entry (never shortening an existing one), drop expired entries, bump the version.
    Raises :class:`SharedStateUnavailable` when Redis cannot be reached."""
    check_value(kind, value)
    jti_key, key_key, version_key = redis_keys(prefix)
    target = jti_key if kind == "jti" else key_key
    score: float | str = "+inf" if math.isinf(until) else until

    async def call(redis: Redis) -> list[Any]:
        pipe = redis.pipeline(transaction=True)
        pipe.zadd(target, {value: score}, gt=True)
        pipe.zremrangebyscore(target, "-inf", now)
        pipe.incr(version_key)
        return await pipe.execute()

    await client.run("revoke", call)


def _decode_entries(rows: list[tuple[bytes, float]]) -> dict[str, float]:
    return {member.decode("utf-8", "replace"): float(score) for member, score in rows}


class RedisRevocations:
    """The Redis revocation lists, mirrored in memory and kept in sync by a background task."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        clock: Clock,
        sync_seconds: float,
        max_stale_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._keys = redis_keys(prefix)
        self._prefix = prefix
        self._epoch: bytes | None = None
        self._clock = clock
        self._sync_seconds = sync_seconds
        self._max_stale = max_stale_seconds
        self._metrics = metrics
        self._jti: Mapping[str, float] = _EMPTY
        self._revoked_keys: Mapping[str, float] = _EMPTY
        self._version: bytes | str | None = None
        self._loaded = False
        #: clock() of the last successful sync (None: never synced)
        self.synced_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- checks (hot path) -------------------------------------------------------------------

    def _now_if_fresh(self) -> float:
        now = self._clock()
        synced = self.synced_at
        if synced is None or now - synced > self._max_stale:
            raise SharedStateUnavailable(
                "revocation list unavailable", "revocation list not synced from Redis"
            )
        return now

    def jti_revoked(self, jti: str) -> bool:
        now = self._now_if_fresh()
        until = self._jti.get(jti)
        return until is not None and until > now

    def key_revoked(self, consumer: str, key_id: str) -> bool:
        now = self._now_if_fresh()
        until = self._revoked_keys.get(f"{consumer}/{key_id}")
        return until is not None and until > now

    # -- sync --------------------------------------------------------------------------------

    async def sync(self) -> bool:
        """Fetch the lists if they changed. Returns False (and logs) when Redis cannot answer."""
        jti_key, key_key, version_key = self._keys
        try:
            epoch = await self._client.epoch(self._prefix, "revocation_sync")
            if self._loaded and self._epoch is not None and epoch != self._epoch:
                await self._republish()
            self._epoch = epoch
            version = await self._client.run("revocation_sync", lambda r: r.get(version_key))
            if not self._loaded or version != self._version:
                now = self._clock()

                async def fetch(redis: Redis) -> list[list[tuple[bytes, float]]]:
                    pipe = redis.pipeline(transaction=True)
                    pipe.zrangebyscore(jti_key, f"({now}", "+inf", withscores=True)
                    pipe.zrangebyscore(key_key, f"({now}", "+inf", withscores=True)
                    result: list[list[tuple[bytes, float]]] = await pipe.execute()
                    return result

                jti_rows, key_rows = await self._client.run("revocation_sync", fetch)
                self._jti = MappingProxyType(_decode_entries(jti_rows))
                self._revoked_keys = MappingProxyType(_decode_entries(key_rows))
                self._version = version
                if self._loaded:
                    log.info("revocation lists updated from Redis (%d jti, %d keys)",
                             len(self._jti), len(self._revoked_keys))
                self._loaded = True
        except SharedStateUnavailable:
            raise_if_cancelled()
            return False
        self.synced_at = self._clock()
        return True

    async def _republish(self) -> None:
        """Redis lost its data (the epoch changed): write the entries this replica still
        enforces back, so a revoked credential does not become valid again (every replica does
        it; ``ZADD GT`` makes that idempotent)."""
        jti_key, key_key, version_key = self._keys
        now = self._clock()
        live = {
            jti_key: {v: u for v, u in self._jti.items() if u > now},
            key_key: {v: u for v, u in self._revoked_keys.items() if u > now},
        }
        log.error("Redis lost the revocation lists: re-publishing the %d jti and %d keys this "
                  "replica enforces", len(live[jti_key]), len(live[key_key]))

        async def call(redis: Redis) -> list[Any]:
            pipe = redis.pipeline(transaction=True)
            for name, entries in live.items():
                if entries:
                    scores: dict[str, float | str] = {
                        v: ("+inf" if math.isinf(u) else u) for v, u in entries.items()
                    }
                    pipe.zadd(name, scores, gt=True)
            pipe.incr(version_key)
            result: list[Any] = await pipe.execute()
            return result

        await self._client.run("revocation_sync", call)

    def configure(self, *, sync_seconds: float, max_stale_seconds: float) -> None:
        """Apply the timings of a reloaded configuration (the mirror itself is kept)."""
        self._sync_seconds = sync_seconds
        self._max_stale = max_stale_seconds

    async def start(self) -> None:
        """First sync now (not fatal when Redis is down), then every ``sync_seconds``."""
        if self._task is not None:
            return
        await self._sync_and_report()
        self._task = asyncio.create_task(self._run(), name="revocation-sync")

    async def _sync_and_report(self) -> None:
        await self.sync()
        if self._metrics is not None:
            synced = self.synced_at
            age = math.inf if synced is None else max(0.0, self._clock() - synced)
            self._metrics.revocation_age.set(age)

    async def _run(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(self._sync_seconds)
            await self._sync_and_report()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)


# ------------------------------------------------------------------------------ both


class RevocationList:
    """The file's entries plus (optionally) the Redis mirror. A check is a dict lookup."""

    def __init__(
        self,
        entries: RevocationEntries,
        *,
        clock: Clock,
        shared: RedisRevocations | None = None,
    ) -> None:
        self._jti = entries.jti
        self._keys = entries.keys
        self._clock = clock
        self.shared = shared

    def jti_revoked(self, jti: str) -> bool:
        until = self._jti.get(jti)
        if until is not None and until > self._clock():
            return True
        return self.shared is not None and self.shared.jti_revoked(jti)

    def key_revoked(self, consumer: str, key_id: str) -> bool:
        until = self._keys.get(f"{consumer}/{key_id}")
        if until is not None and until > self._clock():
            return True
        return self.shared is not None and self.shared.key_revoked(consumer, key_id)
