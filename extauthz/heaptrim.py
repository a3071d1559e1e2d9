"""Give freed heap memory back to the system after a burst (issue 13.2: "memory not returned").

A flood of connections or streams (or a burst of checks) makes grpc's core and Python allocate
tens of MiB; when the clients leave, glibc keeps most of the freed memory in its arenas (one per
thread that allocated: grpc's threads, the event loop), so RSS stays at the peak and the next
burst starts closer to the pod's limit. ``malloc_trim(0)`` returns free pages from every arena.
It runs in a worker thread every ``interval`` seconds (a few milliseconds for a heap of a hundred
MiB, holding only the allocator's locks, never the event loop). Not glibc (musl, macOS): off.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("extauthz.heaptrim")


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def trim_heap() -> bool:
    """Return free heap pages to the system now; False when not available (not glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer:
    """Calls :func:`trim_heap` every ``interval`` seconds from a worker thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start (no-op when the interval is 0 or malloc_trim is not available)."""
        if self.interval > 0 and _TRIM is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(trim_heap)

    async def stop(self) -> None:
        """Stop trimming."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
