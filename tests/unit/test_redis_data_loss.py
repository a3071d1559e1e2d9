"""Redis losing extauthz's data, or being able to, on a real server (issue 13.7, 13.9).

* FLUSHALL / a restart with an empty data set: the epoch key is gone, so nonces signed before the
  loss are refused (their records are gone, a replay could not be told apart), the loss is logged
  and counted, and the revocation lists are re-published from the replicas' copies.
* An evicting ``maxmemory-policy`` (or one that cannot be read): the client refuses to use Redis,
  the server does not become ready, the log line says why.
* ``extauthz revoke`` against a full Redis (OOM) says so.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from extauthz.authn.nonces import NonceTooOld, NonceUse
from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.cli import main
from extauthz.clock import system_clock
from extauthz.metrics import Metrics
from extauthz.server import Server, ServerOptions
from extauthz.state.redis import RedisClient, RedisTarget
from extauthz.state.revocation import RedisRevocations, revoke_in_redis
from extauthz.state.stores import RedisNonceStore
from tests.support.redis_server import RedisServer


def target(url: str, **kwargs: Any) -> RedisTarget:
    return RedisTarget(url=url, timeout_seconds=1.0, health_check_interval_seconds=0.05,
                       **kwargs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    running = RedisServer(data_dir=tmp_path / "redis", persist=False).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[tuple[RedisClient, Metrics]]:
    metrics = Metrics()
    found = RedisClient(target(server.url), metrics)
    await found.start()
    try:
        yield found, metrics
    finally:
        await found.close()


def use(nonce: str, created: float) -> NonceUse:
    return NonceUse(scope="k", nonce=nonce, created=created, expires=None, max_age=0,
                    skew=300, share=100)


async def raw_call(server: RedisServer, *args: str) -> Any:
    raw = Redis.from_url(server.url)
    try:
        return await raw.execute_command(*args)
    finally:
        await raw.aclose()


async def wait_for(probe: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("loss", ["flushall", "restart_empty"])
async def test_nonces_signed_before_a_data_loss_are_refused(
    server: RedisServer, client: tuple[RedisClient, Metrics], loss: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis, metrics = client
    prefix = "p:"
    # A Redis that has held extauthz's state for a minute already.
    await raw_call(server, "SET", f"{prefix}epoch", f"{(int(time.time()) - 60) * 1000}-old")
    await redis.watch_epoch(prefix)
    store = RedisNonceStore(redis, prefix=prefix, owner="sig", clock=system_clock)
    signed = time.time() - 2  # made in an earlier second than the loss (epochs are seconds)
    assert await store.remember(use("before", signed)) is True
    assert await store.remember(use("before", signed)) is False
    await asyncio.sleep(0.01)
    caplog.set_level(logging.ERROR, logger="extauthz.redis")
    if loss == "flushall":
        await raw_call(server, "FLUSHALL")
    else:
        server.restart()  # persist=False: it comes back empty
    # The replayed signature: its nonce record is gone; without the epoch it would pass.
    async def refused() -> bool:
        try:
            await store.remember(use("before", signed))
        except NonceTooOld as exc:
            assert "lost its data" in str(exc)
            return True
        except Exception:
            return False
        return False

    deadline = time.monotonic() + 5
    while not await refused():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # Signatures made after the loss work (and are replay-protected) again.
    await asyncio.sleep(0.01)
    after = time.time()
    assert await store.remember(use("after", after)) is True
    assert await store.remember(use("after", after)) is False
    # The probe saw the epoch change: logged and counted.
    await wait_for(lambda: metrics.registry.get_sample_value(
        "extauthz_redis_data_loss_total") == 1)
    assert any("lost extauthz's data" in r.getMessage() for r in caplog.records)


async def test_revocations_are_republished_after_a_flushall(
    server: RedisServer, client: tuple[RedisClient, Metrics]
) -> None:
    redis, _ = client
    prefix = "r:"
    mirror = RedisRevocations(redis, prefix=prefix, clock=system_clock, sync_seconds=0.05,
                              max_stale_seconds=5)
    await revoke_in_redis(redis, prefix, "jti", "stolen-token", float("inf"), time.time())
    await mirror.start()
    try:
        assert mirror.jti_revoked("stolen-token")
        await raw_call(server, "FLUSHALL")
        await asyncio.sleep(0.5)  # several syncs
        assert mirror.jti_revoked("stolen-token"), "a FLUSHALL un-revoked a token"
        score = await raw_call(server, "ZSCORE", f"{prefix}revoked:jti", "stolen-token")
        assert score is not None and float(score) == float("inf")  # written back
    finally:
        await mirror.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random"])
async def test_an_evicting_policy_is_refused(tmp_path: Path, policy: str) -> None:
    with RedisServer(data_dir=tmp_path / "r", persist=False,
                     extra_args=("--maxmemory", "64mb", "--maxmemory-policy", policy)) as srv:
        client = RedisClient(target(srv.url), Metrics())
        await client.start()
        try:
            assert client.problem is not None and f"maxmemory-policy is {policy}" in client.problem
            with pytest.raises(SharedStateUnavailable):
                await client.run("nonce", lambda r: r.get("x"))
            # Fixed at runtime: the next probe trusts it again.
            await raw_call(srv, "CONFIG", "SET", "maxmemory-policy", "noeviction")
            await wait_for(lambda: client.problem is None)
            assert await client.run("nonce", lambda r: r.get("x")) is None
        finally:
            await client.close()


@pytest.mark.parametrize("assume", [False, True])
async def test_config_get_disabled_needs_assume_noeviction(tmp_path: Path, assume: bool) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text('rename-command CONFIG ""\n')
    srv = RedisServer(data_dir=tmp_path / "r", persist=False)
    srv.extra_args = ()
    argv = srv.argv
    srv.argv = lambda: [argv()[0], str(conf), *argv()[1:]]  # type: ignore[method-assign]
    srv.start()
    client = RedisClient(target(srv.url, assume_noeviction=assume), Metrics())
    try:
        await client.start()
        if assume:
            assert client.problem is None
        else:
            assert client.problem is not None and "assume_noeviction" in client.problem
    finally:
        await client.close()
        srv.stop()


def write_server_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        "settings": {"redis": {"url": url, "timeout_seconds": 1.0}},
        "authenticators": {"anon": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
        "routes": [{"name": "all", "match": {"prefix": "/"}, "authn": ["anon"]}],
    }))
    return config


async def test_server_is_not_ready_against_an_evicting_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evicting = ("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    with RedisServer(data_dir=tmp_path / "r", persist=False, extra_args=evicting) as srv:
        config = write_server_config(tmp_path, srv.url)
        caplog.set_level(logging.ERROR)
        server = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0",
                                      grace_seconds=1, decision_log=False,
                                      watch_interval_seconds=60))
        await server.start()
        try:
            await asyncio.sleep(0.2)
            assert server.ready is False
            messages = " ".join(r.getMessage() for r in caplog.records)
            assert "not ready" in messages and "maxmemory-policy is allkeys-lru" in messages
        finally:
            await server.stop()


def test_revoke_against_a_full_redis_says_it_is_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer(data_dir=tmp_path / "r", persist=False,
                     extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")) as srv:
        # Fill it: a write is then refused with OOM.
        import redis as sync_redis

        raw = sync_redis.Redis.from_url(srv.url)
        try:
            blob = secrets.token_bytes(4096)
            for i in range(5000):
                try:
                    raw.set(f"fill:{i}", blob)
                except sync_redis.exceptions.OutOfMemoryError:
                    break
            else:
                pytest.fail("Redis never reported OOM")
        finally:
            raw.close()
        config = write_server_config(tmp_path, srv.url)
        assert main(["revoke", "jti", "t", "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert "is full (OOM" in err and "t NOT revoked" in err
        assert "unreachable" not in err
