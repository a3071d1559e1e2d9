"""Hot reload: notice configuration changes and swap in a new snapshot, or keep the old one.

Kubernetes updates ConfigMap/Secret mounts by swapping a ``..data`` symlink, so watching a
file's inode via inotify on the file itself misses updates. We poll instead: every
``interval`` seconds, ``os.stat`` (following symlinks) each watched file and its directory; any
change in (inode, size, mtime) starts a debounce, and once nothing has changed for ``debounce``
seconds a reload runs. Polling a handful of stats per second costs nothing measurable and works
the same on every filesystem.

How the two ways files are updated are seen:

* **ConfigMap/Secret mounts** (``dir/extauthz.yaml -> ..data/extauthz.yaml``, ``..data ->
  ..2026_01_01_...``): the kubelet writes a new timestamped directory and renames a new ``..data``
  symlink over the old one. ``os.stat`` follows the symlinks, so the file's inode changes, and the
  mount directory's mtime changes with the rename. The swap is atomic: a reload never sees half of
  an update.
* **In-place writes** (an editor, ``cp``, a plain ``open(..., "w")``): size and mtime change. Such
  a write is not atomic, so a reload may read a truncated file; that configuration is refused (the
  previous one keeps serving) and, because the watcher's baseline is the state *before* the
  reload read the files, the completed write is picked up at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

log = logging.getLogger("extauthz.reload")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """(path, inode, size, mtime_ns) of each path and its parent directory; -1s when missing."""
    seen: set[Path] = set()
    out: list[tuple[str, int, int, int]] = []
    for path in paths:
        for candidate in (path, path.parent):
            if candidate in seen:
                continue
            seen.add(candidate)
            try:
                st = os.stat(candidate)
                out.append((str(candidate), st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((str(candidate), -1, -1, -1))
    return tuple(sorted(out))


def _changed_since(prints: Fingerprint, since_ns: int) -> Fingerprint:
    """``prints`` with every entry modified at or after ``since_ns`` marked as unseen."""
    return tuple(
        (path, -2, -2, -2) if mtime >= since_ns else (path, inode, size, mtime)
        for path, inode, size, mtime in prints
    )


class ConfigWatcher:
    """Calls ``reload()`` after the watched files change and then stay unchanged a moment."""

    def __init__(
        self,
        paths: Callable[[], Iterable[Path]],
        reload: Callable[[], Awaitable[object]],
        *,
        interval: float = 1.0,
        debounce: float = 0.5,
    ) -> None:
        self._paths = paths
        self._reload = reload
        self._interval = interval
        self._debounce = debounce
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        paths = tuple(self._paths())
        current = fingerprint(paths)
        while True:
            await asyncio.sleep(self._interval)
            now_paths = tuple(self._paths())
            if now_paths != paths:  # another reload (SIGHUP) changed the set of files
                paths, current = now_paths, fingerprint(now_paths)
                continue
            latest = fingerprint(paths)
            if latest == current:
                continue
            # Debounce: wait until a burst of writes (several files of a mount) has settled.
            while True:
                await asyncio.sleep(self._debounce)
                settled = fingerprint(paths)
                if settled == latest:
                    break
                latest = settled
            started = time.time_ns()
            try:
                await self._reload()
            except Exception:  # the reload path logs and counts its own failures
                log.exception("reload failed")
            # Do not retry the same content in a loop, but never lose a change either: the new
            # baseline is what the files looked like *before* the reload read them, so a write
            # that lands while the reload runs (an in-place write caught half-way) is seen at
            # the next poll. A reload may change the set of files (a new include, a new key
            # file); only then is the baseline taken afresh over the new set.
            # A refused reload adds the files it read (server: ConfigError.files); for those
            # there is no "before", so one written while the reload ran counts as changed.
            new_paths = tuple(self._paths())
            if new_paths == paths:
                current = settled
            else:
                paths, current = new_paths, _changed_since(fingerprint(new_paths), started)
