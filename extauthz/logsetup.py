"""Process logging that never blocks the caller (issue 13.6).

A log call from the event loop used to write to stderr in place: a stderr pipe that stops being
read (a stuck log shipper, a full container runtime buffer) blocked the event loop at the first
log line, and every check and ``/healthz`` with it. Here a record is formatted by the caller and
put on a bounded queue (never waiting); one writer thread writes the queue to the file descriptor
with ``os.write``. When the queue is full the record is dropped and counted
(``extauthz_log_dropped_total`` once the server has attached its metric).

``os.write`` on the descriptor instead of ``sys.stderr.write``: a thread blocked inside a Python
stream's ``write`` holds that stream's lock, and the interpreter's final flush of the stream at
exit would then wait for it for ever; a thread blocked in ``os.write`` holds no Python lock, so
the process still exits (the writer is a daemon thread, abandoned at exit when it cannot finish).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

#: records waiting for the writer; beyond this they are dropped (a line is ~150 bytes)
DEFAULT_MAX_QUEUE = 10_000
#: how long exit waits for queued lines to be written
EXIT_FLUSH_SECONDS = 1.0


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to descriptor ``fd`` (blocking; raises OSError)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


class NonBlockingHandler(logging.Handler):
    """Formats in the caller, queues without waiting, writes from one daemon thread."""

    def __init__(self, fd: int, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        super().__init__()
        self._fd = fd
        self._queue: queue.Queue[str] = queue.Queue(max_queue)
        self.dropped = 0
        self._counter: Any = None
        self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._writer.start()

    def attach_counter(self, counter: Any) -> None:
        """Count drops in ``counter`` (a prometheus Counter), including those so far."""
        if self.dropped:
            counter.inc(self.dropped)
        self._counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # a bad format argument must not break the caller
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            if self._counter is not None:
                self._counter.inc()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            lines = [get()]
            try:  # whatever else is queued goes out in the same write
                while len(lines) < 256:
                    lines.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            self._write("".join(lines).encode("utf-8", "replace"))
            for _ in lines:
                self._queue.task_done()

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # closed or broken pipe: nobody to tell
            write_all(self._fd, data)

    def flush_pending(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Wait up to ``timeout`` for queued lines to be written; False when they were not."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


_handler: NonBlockingHandler | None = None


def install(level: str, formatter: logging.Formatter,
            max_queue: int = DEFAULT_MAX_QUEUE) -> bool:
    """Send the root logger (and warnings) to stderr through a :class:`NonBlockingHandler`
    with ``formatter``. False (nothing installed) when the root logger already has a handler,
    like ``logging.basicConfig``, or when stderr has no descriptor (captured in a test): the
    caller then installs a plain stream handler."""
    global _handler
    root = logging.getLogger()
    if root.handlers:
        return False
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    handler = NonBlockingHandler(fd, max_queue)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn would write to sys.stderr in place
    atexit.register(handler.flush_pending)
    _handler = handler
    return True


def attach_dropped_counter(counter: Any) -> None:
    """Count dropped log records in ``counter`` (no-op when :func:`configure` was not used)."""
    if _handler is not None:
        _handler.attach_counter(counter)
