"""The configuration watcher (extauthz.reload): what it notices, and that it never loses a write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from extauthz.reload import ConfigWatcher
from tests.support.load import ConfigMapDir

FAST = {"interval": 0.02, "debounce": 0.03}


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _counting(
    on_call: Callable[[int], None] | None = None,
) -> tuple[list[int], Callable[[], Awaitable[object]]]:
    calls: list[int] = []

    async def reload() -> object:
        calls.append(len(calls) + 1)
        if on_call is not None:
            on_call(len(calls))
        return True

    return calls, reload


async def test_configmap_symlink_swap_triggers_one_reload(tmp_path: Path) -> None:
    mount = ConfigMapDir(tmp_path / "cm", {"extauthz.yaml": "a: 1\n"})
    calls, reload = _counting()
    watcher = ConfigWatcher(lambda: [mount.path("extauthz.yaml")], reload, **FAST)
    watcher.start()
    try:
        await asyncio.sleep(0.1)
        assert calls == []  # nothing changed, nothing reloaded
        mount.swap({"extauthz.yaml": "a: 2\n"})  # same size: only the inode/dir tell
        await _until(lambda: len(calls) == 1)
        await asyncio.sleep(0.2)
        assert calls == [1]  # once, not in a loop
    finally:
        await watcher.stop()


async def test_in_place_write_triggers_a_reload(tmp_path: Path) -> None:
    mount = ConfigMapDir(tmp_path / "cm", {"extauthz.yaml": "a: 1\n"})
    calls, reload = _counting()
    watcher = ConfigWatcher(lambda: [mount.path("extauthz.yaml")], reload, **FAST)
    watcher.start()
    try:
        await asyncio.sleep(0.05)
        mount.write_in_place("extauthz.yaml", "a: 22\n")
        await _until(lambda: len(calls) == 1)
    finally:
        await watcher.stop()


async def test_a_write_landing_during_the_reload_is_not_lost(tmp_path: Path) -> None:
    """An in-place write caught half-way: the reload reads the partial file, the writer
    finishes while the reload runs. The completed write must cause another reload."""
    config = tmp_path / "extauthz.yaml"
    config.write_text("a: 1\n")

    def finish_write_during_first_reload(call: int) -> None:
        if call == 1:
            config.write_text("a: 1\nb: the rest of the write\n")

    calls, reload = _counting(finish_write_during_first_reload)
    watcher = ConfigWatcher(lambda: [config], reload, **FAST)
    watcher.start()
    try:
        await asyncio.sleep(0.05)
        config.write_text("a: ")  # the first half
        await _until(lambda: len(calls) == 2)
        await asyncio.sleep(0.2)
        assert calls == [1, 2]
    finally:
        await watcher.stop()


async def test_a_new_file_set_from_another_reload_is_watched_without_a_spurious_reload(
    tmp_path: Path,
) -> None:
    main, extra = tmp_path / "main.yaml", tmp_path / "keys" / "extra.pem"
    main.write_text("a: 1\n")
    extra.parent.mkdir()
    extra.write_text("key\n")
    watched = [main]
    calls, reload = _counting()
    watcher = ConfigWatcher(lambda: list(watched), reload, **FAST)
    watcher.start()
    try:
        await asyncio.sleep(0.05)
        watched.append(extra)  # e.g. SIGHUP loaded a config that names a new key file
        await asyncio.sleep(0.2)
        assert calls == []
        extra.write_text("rotated key\n")
        await _until(lambda: len(calls) == 1)
    finally:
        await watcher.stop()
