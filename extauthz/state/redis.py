"""The Redis client: one connection pool per process, every call bounded, a health flag.

:class:`RedisClient` wraps ``redis.asyncio``:

* The pool is created on the event loop in :meth:`RedisClient.start` and closed in
  :meth:`RedisClient.close` (both idempotent; a closed client can be started again).
* Every operation runs under ``asyncio.timeout(timeout_seconds)`` (connecting included). A
  connection-level error, or a failed probe, marks Redis **down**: ``extauthz_redis_up`` drops to
  0 and from then on calls fail at once (no request waits for a dead Redis, so the 503 reaches Envoy
  well inside its own ext_authz timeout) until the background probe (``PING`` every
  ``health_check_interval_seconds``) succeeds again. Any failure raises
  :class:`~extauthz.authn.shared_state.SharedStateUnavailable` (503
  ``shared_state_unavailable``) and counts ``extauthz_redis_errors_total{op}``. A timeout fails
  only its own operation and wakes the probe: the bound includes event-loop delay, so one late
  reply on a busy replica is not taken for an outage (a PING that also cannot make it is).
* Reconnection is redis-py's: a connection that broke is dropped and the next command opens a
  new one. redis-py retries a command **once**, without backoff, on a connection error — so the
  first command after a Redis restart (on a pooled connection the restart killed) still succeeds.
  The Lua scripts are written so that a retried call is harmless (see :mod:`extauthz.state.stores`).
* Cancellation always wins: a Redis error that surfaces while the task has a pending cancel
  request (redis-py may report a cancellation that lands mid-teardown as ``ConnectionError``) is
  re-raised as ``CancelledError``, the background loops stop when cancelled, and closing waits for
  them at most 2 s (:func:`stop_task`) — shutting down or reloading never hangs on Redis.

:class:`StateHub` keeps one :class:`RedisClient` per distinct target for the process and
reference-counts the snapshots using it, so a configuration reload that keeps the same Redis
settings keeps the same pool (in-flight checks of the old snapshot are never cut off), and the
pool is closed when the last snapshot using it is closed (the revocation mirrors of
:mod:`extauthz.state.revocation` are shared the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from extauthz import tracing
from extauthz.authn.reload_state import ReloadState
from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.metrics import Metrics
from extauthz.state.local import LocalState

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger("extauthz.redis")

T = TypeVar("T")

#: bounded values of the ``op`` label of ``extauthz_redis_errors_total``
OPS = ("nonce", "attempts", "revocation_sync", "revoke", "ping")

#: while Redis is down, the probe retries this often (at most; each PING is bounded by the
#: timeout too): the circuit closes again within about this plus one timeout after Redis answers
DOWN_PROBE_SECONDS = 0.05

#: the only ``maxmemory-policy`` under which Redis never drops extauthz's keys on its own
SAFE_POLICY = "noeviction"

#: KEYS[1] the epoch key; ARGV[1] now (ms). Returns {value, 1 if created now}.
EPOCH_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v then return {v, 0} end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
"""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where and how to connect. Hashable: equal targets share one client (and pool)."""

    url: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    timeout_seconds: float = 0.1
    max_connections: int = 64
    health_check_interval_seconds: float = 1.0
    #: trust that the server never evicts keys when ``CONFIG GET`` is refused (managed Redis)
    assume_noeviction: bool = False

    @property
    def display(self) -> str:
        """The URL without credentials, for logs and messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def __repr__(self) -> str:
        return f"RedisTarget({self.display})"


def cancel_requested() -> bool:
    """Whether the running task has been asked to stop (``Task.cancel``) and has not yet."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into another error.

    redis-py can answer a cancellation that lands while it tears a broken connection down with a
    ``ConnectionError``; caught as "Redis is down" it would keep a cancelled background loop (or
    a check whose caller went away) running. A timeout of our own ``asyncio.timeout`` is no
    cancellation request any more once its block has exited.
    """
    if cancel_requested():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task[None], timeout: float = 2.0) -> None:
    """Cancel ``task`` and wait for it, at most ``timeout`` seconds (closing never hangs)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("task %s did not stop within %.1fs; left behind", task.get_name(), timeout)
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s failed: %s", task.get_name(), type(task.exception()).__name__)


class RedisClient:
    """One Redis connection pool with bounded calls and a health flag (module docstring)."""

    def __init__(self, target: RedisTarget, metrics: Metrics) -> None:
        self.target = target
        self._metrics = metrics
        self._redis: Redis | None = None
        self._up = False
        self._probe_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._errors = {op: metrics.redis_errors.labels(op=op) for op in OPS}
        #: why Redis must not be used although it answers (an evicting maxmemory-policy)
        self.problem: str | None = None
        #: key prefix -> the epoch value last seen (see :meth:`watch_epoch`)
        self._epochs: dict[str, bytes | None] = {}

    @property
    def up(self) -> bool:
        """Whether the last operation (or probe) reached Redis."""
        return self._up

    @property
    def started(self) -> bool:
        return self._redis is not None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the pool on the running loop and probe once (never raises for a down Redis)."""
        if self._redis is not None:
            return
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        target = self.target
        kwargs: dict[str, Any] = {
            "socket_timeout": target.timeout_seconds,
            "socket_connect_timeout": target.timeout_seconds,
            "max_connections": target.max_connections,
            "timeout": target.timeout_seconds,  # waiting for a free pooled connection
            "retry": Retry(NoBackoff(), 1),
        }
        if target.password is not None:
            kwargs["password"] = target.password
        if target.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = target.tls_ca_file
        pool = BlockingConnectionPool.from_url(target.url, **kwargs)
        self._redis = Redis(connection_pool=pool)
        self._scripts.clear()
        self._wake = asyncio.Event()
        await self._probe()
        if not self._up:
            log.warning("Redis %s is not reachable at start: checks that need shared state "
                        "answer 503 shared_state_unavailable until it is", target.display)
        self._probe_task = asyncio.create_task(self._probe_loop(self._wake), name="redis-probe")

    async def close(self) -> None:
        """Stop probing and close the pool (errors are logged, never raised)."""
        task, self._probe_task = self._probe_task, None
        if task is not None:
            await stop_task(task)
        redis, self._redis = self._redis, None
        # Not through _set_up: the gauge belongs to whichever client is serving now (a reload
        # to another target starts the new client before the old one is closed).
        self._up = False
        if redis is not None:
            try:
                await redis.aclose(close_connection_pool=True)
            except Exception as exc:  # closing must finish
                log.warning("error while closing the Redis pool: %s", type(exc).__name__)

    # -- operations --------------------------------------------------------------------------

    def script(self, source: str) -> AsyncScript:
        """A Lua script registered on this client (EVALSHA, loaded again after a restart)."""
        redis = self._require()
        script = self._scripts.get(source)
        if script is None:
            script = redis.register_script(source)
            self._scripts[source] = script
        return script

    @tracing.outbound_span("redis", lambda _self, op, _call: {"db.system.name": "redis",
                                                              "db.operation.name": op})
    async def run(self, op: str, call: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``call(redis)`` bounded by the timeout; :class:`SharedStateUnavailable` on any
        failure (and at once while Redis is known to be down). ``op`` is a metric label."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        redis = self._require()
        if not self._up:
            self._errors[op].inc()
            raise SharedStateUnavailable("shared state unavailable", "Redis is down")
        if self.problem is not None:
            self._errors[op].inc()
            raise SharedStateUnavailable("shared state unavailable", "Redis may evict keys")
        try:
            async with asyncio.timeout(self.target.timeout_seconds):
                return await call(redis)
        except (RedisTimeoutError, TimeoutError) as exc:
            raise_if_cancelled()
            # A slow answer fails this operation (fail closed) but does not by itself mark Redis
            # down: the bound includes time the reply waited on a busy event loop, and one late
            # reply on an overloaded replica must not turn every shared-state check into a 503.
            # The probe runs at once and marks Redis down if a PING cannot make it either.
            self._errors[op].inc()
            self._probe_now()
            raise SharedStateUnavailable("shared state unavailable", type(exc).__name__) from None
        except (RedisConnectionError, OSError) as exc:
            raise_if_cancelled()
            self._errors[op].inc()
            self._mark_down(exc)
            raise SharedStateUnavailable("shared state unavailable", type(exc).__name__) from None
        except RedisError as exc:
            raise_if_cancelled()
            # The server answered, with an error (OOM under noeviction, a script error, ...).
            self._errors[op].inc()
            log.warning("Redis %s refused %s: %s", self.target.display, op, type(exc).__name__)
            raise SharedStateUnavailable("shared state unavailable", type(exc).__name__) from None

    def _require(self) -> Redis:
        if self._redis is None:
            raise SharedStateUnavailable("shared state unavailable", "Redis client not started")
        return self._redis

    # -- health ------------------------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            if up:
                log.info("Redis %s is reachable", self.target.display)
            else:
                log.warning("Redis %s is unreachable: checks that need shared state answer 503 "
                            "shared_state_unavailable until it is back", self.target.display)
        self._up = up
        self._metrics.redis_up.set(1 if up else 0)

    def _mark_down(self, exc: BaseException) -> None:
        if self._up:
            log.debug("Redis operation failed: %s", type(exc).__name__)
            self._set_up(False)
            self._probe_now()  # a one-off broken connection recovers fast

    def _probe_now(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _probe(self) -> None:
        redis = self._redis
        if redis is None:
            return
        try:
            async with asyncio.timeout(self.target.timeout_seconds):
                await redis.ping()
            await self._check_policy(redis)
            for prefix in list(self._epochs):
                await self._check_epoch(redis, prefix)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means "not up"; the reason is only logged
            raise_if_cancelled()
            if self._up:
                log.debug("Redis probe failed: %s", type(exc).__name__)
            self._errors["ping"].inc()
            self._set_up(False)
        else:
            self._set_up(True)

    async def _check_policy(self, redis: Redis) -> None:
        """Refuse a Redis that may evict keys: an evicted nonce is a replay accepted, an evicted
        revocation a revoked credential allowed, an evicted counter fresh password guesses."""
        from redis.exceptions import ResponseError

        problem: str | None
        try:
            async with asyncio.timeout(self.target.timeout_seconds):
                answer = await redis.config_get("maxmemory-policy")
        except ResponseError as exc:  # CONFIG disabled or not permitted (managed Redis)
            if self.target.assume_noeviction:
                problem = None
            else:
                problem = (
                    f"CONFIG GET maxmemory-policy is refused ({str(exc)[:80]}); extauthz cannot "
                    "tell whether Redis may evict its keys. Make sure the policy is noeviction, "
                    "then set settings.redis.assume_noeviction: true"
                )
        else:
            found = {_text(k): _text(v) for k, v in cast(dict[Any, Any], answer).items()}
            policy = found.get("maxmemory-policy", "?")
            problem = None if policy == SAFE_POLICY else (
                f"maxmemory-policy is {policy}: Redis may evict HMAC nonces (replays accepted), "
                "Basic attempt counters and revocations (revoked credentials allowed). "
                "Set maxmemory-policy noeviction"
            )
        if problem != self.problem:
            if problem is not None:
                log.error("Redis %s is not used: %s; checks that need shared state answer 503 "
                          "shared_state_unavailable and the server does not become ready",
                          self.target.display, problem)
            else:
                log.info("Redis %s: maxmemory-policy is safe now", self.target.display)
        self.problem = problem

    async def watch_epoch(self, prefix: str) -> None:
        """Watch the epoch key of ``prefix`` (``P epoch``: when this Redis's extauthz state
        began). It is created when missing; a value that changes or disappears means Redis lost
        its data (restarted empty, FLUSHALL, eviction): logged as an error. The replay cache's
        script refuses signatures made before the epoch on its own. Checked at every probe;
        the first check runs now (never raises)."""
        if prefix in self._epochs:
            return
        self._epochs[prefix] = None
        redis = self._redis
        if redis is not None and self._up:
            try:
                await self._check_epoch(redis, prefix)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next probe retries
                raise_if_cancelled()
                log.debug("epoch check failed: %s", type(exc).__name__)

    async def epoch(self, prefix: str, op: str) -> bytes:
        """The epoch value of ``prefix`` (created when missing), through :meth:`run`; a change
        is logged like the probe's. :class:`SharedStateUnavailable` when Redis cannot answer."""
        value, created = await self.run(op, lambda r: self._epoch_call(r, prefix))
        self._note_epoch(prefix, value, bool(int(created)))
        return bytes(value)

    async def _epoch_call(self, redis: Redis, prefix: str) -> list[Any]:
        import secrets
        import time

        script = self.script(EPOCH_SCRIPT)
        # Whole seconds, the granularity of a signature's `created`: a signature made in the
        # second the epoch begins is not refused for being "older" than it.
        # The random part makes every (re)creation distinct, even within one second.
        now = f"{int(time.time()) * 1000}-{secrets.token_hex(8)}"
        result: list[Any] = await script(keys=[f"{prefix}epoch"], args=[now], client=redis)
        return result

    async def _check_epoch(self, redis: Redis, prefix: str) -> None:
        async with asyncio.timeout(self.target.timeout_seconds):
            value, created = await self._epoch_call(redis, prefix)
        self._note_epoch(prefix, value, bool(int(created)))

    def _note_epoch(self, prefix: str, value: bytes, created: bool) -> None:
        known = self._epochs.get(prefix)
        if known is not None and value != known:
            log.error(
                "Redis %s lost extauthz's data (key %sepoch %s): HMAC nonces signed before now "
                "are refused, Basic attempt counters restarted, revocation lists are "
                "re-published from the replicas' copies", self.target.display, prefix,
                "was recreated" if created else "changed")
            self._metrics.redis_data_loss.inc()
        self._epochs[prefix] = value

    async def _probe_loop(self, wake: asyncio.Event) -> None:
        interval = self.target.health_check_interval_seconds
        while not cancel_requested():
            # Closed circuit: probe every interval (or at once when an operation timed out).
            # Open circuit (down): probe every DOWN_PROBE_SECONDS, so a short stall costs about
            # its own length in 503s, not a whole health interval more.
            wait = interval if self._up else min(interval, DOWN_PROBE_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()
            wake.clear()
            await self._probe()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def client_key(target: RedisTarget) -> Hashable:
    """The :class:`StateHub` key of the client of ``target``."""
    return ("client", target)


class Shared(Protocol):
    """What the hub shares between snapshots: started by the first user, closed by the last."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Shared)


class StateHub:
    """The process's Redis clients (one per target) and revocation mirrors (one per target and
    key prefix), shared by the snapshots that use them.

    :meth:`client` / :meth:`shared` only build objects (safe from the worker thread that compiles
    a configuration; compiles are serialized by the server's reload lock); :meth:`acquire` (on
    the loop, when a snapshot starts) starts an object for its first user and :meth:`release`
    (when the snapshot closes) closes it once nobody uses it any more. A reload that keeps the
    Redis settings therefore keeps the pool and the synced revocation lists: the new snapshot
    enforces the lists the old one had even if Redis is down at that moment.
    """

    def __init__(self, metrics: Metrics, reload_state: ReloadState | None = None) -> None:
        self.metrics = metrics
        #: in-memory replay cache and attempt counters of the process (kept across reloads, in
        #: ``reload_state``: the server's carry-over store)
        self.local = LocalState(reload_state)
        self._objects: dict[Hashable, Shared] = {}
        self._users: Counter[Hashable] = Counter()

    def shared(self, key: Hashable, factory: Callable[[], S]) -> S:
        """The object registered under ``key``, made by ``factory`` the first time."""
        found = self._objects.get(key)
        if found is None:
            found = self._objects.setdefault(key, factory())
        return cast(S, found)

    def client(self, target: RedisTarget) -> RedisClient:
        return self.shared(client_key(target), lambda: RedisClient(target, self.metrics))

    def problems(self) -> list[str]:
        """Why a Redis in use must not be trusted (an evicting ``maxmemory-policy``, or one that
        cannot be read): the server does not become ready while there is one."""
        return [
            f"{obj.target.display}: {obj.problem}"
            for key, obj in self._objects.items()
            if isinstance(obj, RedisClient) and self._users[key] > 0 and obj.problem is not None
        ]

    async def acquire(self, key: Hashable) -> None:
        """One more user of the object under ``key``; started for the first."""
        self._users[key] += 1
        if self._users[key] == 1:
            await self._objects[key].start()

    async def release(self, key: Hashable) -> None:
        """One user fewer; closed after the last."""
        if self._users[key] <= 0:
            return
        self._users[key] -= 1
        if self._users[key] <= 0:
            del self._users[key]
            await self._objects[key].close()

    async def close(self) -> None:
        """Close everything (process exit): mirrors before the clients they read from."""
        self._users.clear()
        ordered = sorted(self._objects.items(), key=lambda item: isinstance(item[1], RedisClient))
        for _, obj in ordered:
            try:
                await obj.close()
            except Exception as exc:  # closing must finish
                log.warning("error while closing shared state: %s", type(exc).__name__)
