"""State that must survive a hot reload of the server, proven through ``Server.reload``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from extauthz.errors import Reason
from extauthz.server import Server, ServerOptions
from extauthz.snapshot import Snapshot
from tests.unit.test_hmac_sig import FULL, KEY_ID, RFC_SECRET_B64, request, sign_view


def _config(tmp_path: Path, marker: str) -> Path:
    (tmp_path / "rfc.key").write_text(RFC_SECRET_B64 + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        # `marker` only makes the two configurations differ (a real reload, a new snapshot)
        "settings": {"realm": marker},
        "authenticators": {"sig": {"hmac": {
            "keys": [{"id": KEY_ID, "secret_file": "rfc.key", "secret_encoding": "base64"}],
            "required_components": FULL,
            "require_nonce": True,
        }}},
        "routes": [{"name": "signed", "match": {"prefix": "/"}, "authn": ["sig"]}],
    }))
    return config


async def test_hmac_nonce_seen_before_a_reload_is_still_a_replay(tmp_path: Path) -> None:
    config = _config(tmp_path, "before")
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                               decision_log=False, watch_interval_seconds=60))
    await srv.start()
    try:
        view = sign_view(request(), FULL, nonce="once-only", created=int(time.time()))
        first = await srv.engine.check(view)
        assert first.allowed, first
        old = srv.engine.snapshot
        _config(tmp_path, "after")
        assert await srv.reload() is True
        assert srv.engine.snapshot is not old  # a new snapshot serves now
        replay = await srv.engine.check(view)
        assert not replay.allowed
        assert replay.reason is Reason.REPLAYED
        assert replay.http_status == 401
        assert replay.grpc_code.name == "UNAUTHENTICATED"
    finally:
        await srv.stop()


async def test_a_snapshot_that_fails_to_start_is_closed_and_the_old_one_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, "before")
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=1,
                               decision_log=False, watch_interval_seconds=60))
    await srv.start()
    try:
        serving = srv.engine.snapshot
        closed: list[Snapshot] = []
        real_close = Snapshot.close

        async def failing_start(self: Snapshot) -> None:
            raise RuntimeError("a background task could not start")

        async def recording_close(self: Snapshot) -> None:
            closed.append(self)
            await real_close(self)

        monkeypatch.setattr(Snapshot, "start", failing_start)
        monkeypatch.setattr(Snapshot, "close", recording_close)
        _config(tmp_path, "after")
        assert await srv.reload() is False
        assert srv.engine.snapshot is serving  # still the old one
        assert len(closed) == 1 and closed[0] is not serving  # the half-started one released
        reg = srv.metrics.registry
        assert reg.get_sample_value("extauthz_config_reload_total", {"result": "failure"}) == 1
    finally:
        monkeypatch.undo()
        await srv.stop()
