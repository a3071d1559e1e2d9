"""Issue 13 finding 4: a reload during an IdP outage keeps the last good keys, proven through
``Server.reload`` with a real local IdP (tests/support/idp.py).

Every reload kind ends in ``Server.reload`` (config or Secret change seen by the watcher, SIGHUP,
``extauthz revoke`` appending to the revocation file); the tests change the configuration file
itself, rename the authenticator, and append to the revocation file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.authn.introspection import IntrospectionAuthenticator
from extauthz.errors import Reason
from extauthz.server import Server, ServerOptions
from tests.support.builders import make_view
from tests.support.idp import FakeIdP, serve_app
from tests.support.tokens import AUDIENCE, bearer, claims, jwks, mint, rsa_key

KEY = rsa_key("reload-k1")
MAX_STALE = 3.0


def _write(tmp_path: Path, issuer: str, *, marker: str, name: str = "idp",
           source: dict[str, Any] | None = None, max_stale: float = MAX_STALE,
           fetch_timeout: float = 0.5) -> Path:
    revocations = tmp_path / "revoked.txt"
    if not revocations.exists():
        revocations.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        "settings": {"realm": marker, "revocation_file": "revoked.txt"},
        "authenticators": {name: {"jwt": {
            "issuer": issuer, "audiences": [AUDIENCE], "algorithms": ["RS256"],
            "jwks": source or {"url": f"{issuer}/jwks.json"},
            "refresh_interval_seconds": 1, "max_stale_seconds": max_stale,
            "fetch_timeout_seconds": fetch_timeout,
        }}},
        "routes": [{"name": "api", "match": {"prefix": "/"}, "authn": [name]}],
    }))  # fmt: skip
    return config


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    async with FakeIdP(jwks(KEY)) as server:
        yield server


async def _server(config: Path) -> Server:
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                               decision_log=False, watch_interval_seconds=60))
    await srv.start()
    return srv


def _view(issuer: str, **extra: Any) -> Any:
    token = mint(KEY, claims(now=time.time(), issuer=issuer, **extra))
    return make_view(headers=bearer(token))


@pytest.mark.parametrize("change", ["config", "rename", "revocation-file"])
@pytest.mark.parametrize("discovery", [False, True], ids=["url", "discovery"])
async def test_reload_during_an_idp_outage_keeps_the_last_good_keys(
    tmp_path: Path, idp: FakeIdP, change: str, discovery: bool
) -> None:
    source = {"discovery": True} if discovery else None
    srv = await _server(_write(tmp_path, idp.issuer, marker="before", source=source))
    try:
        fetched_at = time.monotonic()
        assert (await srv.engine.check(_view(idp.issuer))).allowed
        idp.status = 503  # the outage begins
        old = srv.engine.snapshot
        if change == "config":
            _write(tmp_path, idp.issuer, marker="after", source=source)
        elif change == "rename":
            _write(tmp_path, idp.issuer, marker="after", name="renamed", source=source)
        else:
            with (tmp_path / "revoked.txt").open("a") as f:
                f.write("jti some-other-token\n")
        assert await srv.reload() is True
        assert srv.engine.snapshot is not old
        decision = await srv.engine.check(_view(idp.issuer, jti="after-reload"))
        assert decision.allowed, decision
        # max_stale still counts from the last successful fetch, not from the reload
        await asyncio.sleep(max(0.0, fetched_at + MAX_STALE + 0.5 - time.monotonic()))
        stale = await srv.engine.check(_view(idp.issuer, jti="stale"))
        assert stale.reason is Reason.JWKS_UNAVAILABLE
        assert stale.http_status == 503 and stale.grpc_code.name == "UNAVAILABLE"
    finally:
        await srv.stop()


async def test_reload_with_a_shorter_max_stale_applies_it_to_the_old_keys(
    tmp_path: Path, idp: FakeIdP
) -> None:
    srv = await _server(_write(tmp_path, idp.issuer, marker="before", max_stale=30))
    try:
        assert (await srv.engine.check(_view(idp.issuer))).allowed
        idp.status = 503
        await asyncio.sleep(1.2)
        _write(tmp_path, idp.issuer, marker="after", max_stale=1)  # >= refresh_interval
        assert await srv.reload() is True
        decision = await srv.engine.check(_view(idp.issuer, jti="x"))
        assert decision.reason is Reason.JWKS_UNAVAILABLE  # fetched > 1 s ago: too stale now
    finally:
        await srv.stop()


async def test_keys_of_another_issuer_or_url_are_not_taken_over(
    tmp_path: Path, idp: FakeIdP
) -> None:
    srv = await _server(_write(tmp_path, idp.issuer, marker="before"))
    try:
        assert (await srv.engine.check(_view(idp.issuer))).allowed
        idp.status = 503
        # same issuer, another JWKS URL: the old keys say nothing about that URL
        _write(tmp_path, idp.issuer, marker="after", source={"url": f"{idp.issuer}/other.json"})
        assert await srv.reload() is True
        decision = await srv.engine.check(_view(idp.issuer, jti="y"))
        assert decision.reason is Reason.JWKS_UNAVAILABLE
    finally:
        await srv.stop()


async def test_a_reload_with_adopted_keys_does_not_wait_for_the_idp(
    tmp_path: Path, idp: FakeIdP
) -> None:
    srv = await _server(_write(tmp_path, idp.issuer, marker="before", fetch_timeout=4))
    try:
        idp.delay = 5.0  # a hanging IdP: a blocking first fetch would take the 4 s timeout
        _write(tmp_path, idp.issuer, marker="after", fetch_timeout=4)
        started = time.monotonic()
        assert await srv.reload() is True
        assert time.monotonic() - started < 2.0  # no blocking first fetch (generous margin)
        assert (await srv.engine.check(_view(idp.issuer, jti="z"))).allowed
    finally:
        idp.delay = 0
        await srv.stop()


async def test_introspection_answers_survive_a_reload_for_the_same_endpoint(
    tmp_path: Path,
) -> None:
    from aiohttp import web

    calls: list[str] = []

    async def introspect(request: web.Request) -> web.Response:
        calls.append("x")
        return web.json_response({"active": True, "sub": "alice", "exp": time.time() + 600})

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    runner, port = await serve_app(app)
    (tmp_path / "secret").write_text("client-secret")

    def write(marker: str, endpoint_path: str = "/introspect") -> Path:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "version": 1, "settings": {"realm": marker},
            "authenticators": {"opaque": {"introspection": {
                "endpoint": f"http://127.0.0.1:{port}{endpoint_path}", "client_id": "c",
                "client_secret_file": "secret"}}},
            "routes": [{"name": "api", "match": {"prefix": "/"}, "authn": ["opaque"]}],
        }))  # fmt: skip
        return config

    srv = await _server(write("before"))
    try:
        view = make_view(headers=bearer("opaque-token-1"))
        assert (await srv.engine.check(view)).allowed
        await runner.cleanup()  # the endpoint goes away
        write("after")
        assert await srv.reload() is True
        assert (await srv.engine.check(view)).allowed  # answered from the carried cache
        assert len(calls) == 1
        write("moved", "/elsewhere")  # another endpoint: nothing carried over
        assert await srv.reload() is True
        moved = await srv.engine.check(view)
        assert moved.reason is Reason.INTROSPECTION_UNAVAILABLE
        snapshot = srv.engine.snapshot
        assert snapshot is not None
        assert isinstance(snapshot.authenticators["opaque"], IntrospectionAuthenticator)
    finally:
        await srv.stop()


async def test_introspection_answers_survive_a_reload_that_failed_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration whose start fails (after its authenticators took the answers over) hands
    them back: the next reload still finds the answers of the configuration that kept serving."""
    from aiohttp import web

    from extauthz.snapshot import Snapshot

    async def introspect(request: web.Request) -> web.Response:
        return web.json_response({"active": True, "sub": "alice", "exp": time.time() + 600})

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    runner, port = await serve_app(app)
    (tmp_path / "secret").write_text("client-secret")

    def write(marker: str) -> Path:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "version": 1, "settings": {"realm": marker},
            "authenticators": {"opaque": {"introspection": {
                "endpoint": f"http://127.0.0.1:{port}/introspect", "client_id": "c",
                "client_secret_file": "secret"}}},
            "routes": [{"name": "api", "match": {"prefix": "/"}, "authn": ["opaque"]}],
        }))  # fmt: skip
        return config

    srv = await _server(write("before"))
    try:
        real_start = Snapshot.start

        async def failing_start(self: Snapshot) -> None:
            await real_start(self)  # the authenticators take the answers over ...
            raise RuntimeError("... and then something else cannot start")

        monkeypatch.setattr(Snapshot, "start", failing_start)
        write("refused")
        assert await srv.reload() is False
        monkeypatch.setattr(Snapshot, "start", real_start)
        # answered (and cached) by the configuration that kept serving, after the failed reload
        view = make_view(headers=bearer("opaque-token-2"))
        assert (await srv.engine.check(view)).allowed
        await runner.cleanup()  # the endpoint goes away
        write("after")
        assert await srv.reload() is True
        assert (await srv.engine.check(view)).allowed  # answered from the carried cache
    finally:
        await srv.stop()
