"""An include file fixed in place after a bad write is picked up without SIGHUP (issue 13.9),
through the server's own config watcher.

The refused attempt's files are watched until a configuration loads: a fragment that was not
part of the serving configuration (a new file in an included directory, a newly included file)
is otherwise invisible to the watcher, and an in-place write does not change its directory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from extauthz.server import Server, ServerOptions
from tests.support.builders import make_view

ROUTE_A = {"routes": [{"name": "a", "match": {"prefix": "/a"}, "public": True}]}
ROUTE_B = {"routes": [{"name": "b", "match": {"prefix": "/b"}, "public": True}]}


def main_config(tmp_path: Path, include: list[str]) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        "include": include,
        "routes": [{"name": "root", "match": {"prefix": "/root"}, "public": True}],
    }))
    return config


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[Callable[[], Server]]:
    servers: list[Server] = []

    def start() -> Server:
        srv = Server(ServerOptions(str(tmp_path / "config.yaml"), "127.0.0.1:0", "127.0.0.1:0",
                                   grace_seconds=1, decision_log=False,
                                   watch_interval_seconds=0.05))
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()


async def reloads(srv: Server, result: str) -> float:
    value = srv.metrics.registry.get_sample_value(
        "extauthz_config_reload_total", {"result": result})
    return value or 0.0


async def wait_for_reloads(srv: Server, result: str, count: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await reloads(srv, result) < count:
        assert time.monotonic() < deadline, f"no {result} reload within {timeout}s"
        await asyncio.sleep(0.05)


async def route_of(srv: Server, path: str) -> str | None:
    decision = await srv.engine.check(make_view(path))
    return decision.route


@pytest.mark.parametrize("layout", ["new_file_in_included_dir", "newly_included_file"])
async def test_a_fragment_fixed_in_place_is_picked_up(
    tmp_path: Path, watching: Callable[[], Server], layout: str
) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.yaml").write_text(yaml.safe_dump(ROUTE_A))
    main_config(tmp_path, ["conf.d"])
    srv = watching()
    await srv.start()
    await asyncio.sleep(0.3)  # the watcher took its first look
    assert await route_of(srv, "/b") != "b"
    # A bad write: a new fragment with broken YAML (or a new include of a broken file).
    if layout == "new_file_in_included_dir":
        bad = conf_d / "b.yaml"
        bad.write_text("routes: [ {name: b, match: {prefix: /b}\n")  # unterminated
    else:
        bad = tmp_path / "extra.yaml"
        bad.write_text("routes: [ {name: b, match: {prefix: /b}\n")
        await asyncio.sleep(0.05)
        main_config(tmp_path, ["conf.d", "extra.yaml"])
    await wait_for_reloads(srv, "failure", 1)
    assert await route_of(srv, "/b") != "b"  # the previous configuration keeps serving
    await asyncio.sleep(0.3)  # well past the watcher's debounce: nothing else happens
    # Fixed in place: same file, rewritten; no SIGHUP, no other file touched.
    with bad.open("w") as out:
        out.write(yaml.safe_dump(ROUTE_B))
    await wait_for_reloads(srv, "success", 1)
    assert await route_of(srv, "/b") == "b"
