"""Run the front's Envoy as a child of extauthz: start, watch, restart, drain, stop.

* **No orphan**: the child is started with ``PR_SET_PDEATHSIG`` = SIGKILL (Linux), so the kernel
  kills it when extauthz dies, however it dies (SIGKILL and OOM kill included). It runs in a
  session of its own, so a Ctrl-C or a signal to extauthz's process group does not cut it off
  before extauthz has drained it.
* **Restart**: when Envoy exits while extauthz is not stopping, extauthz logs its exit status,
  reports itself not ready (``/readyz`` 503, ``extauthz_ready`` 0) and starts it again after a
  backoff (0.5 s doubling to 10 s; back to 0.5 s after it ran 30 s).
* **Logs**: Envoy's stderr is read line by line into extauthz's own logging (logger
  ``extauthz.envoy``, at Envoy's level), so one container log has both.
* **Admin**: only on a Unix socket in the private directory (:mod:`extauthz.grpcfront.front`).
* **Drain** (:meth:`EnvoySupervisor.drain`): ``POST /drain_listeners?graceful`` (every
  connection gets GOAWAY at once: ``--drain-strategy immediate``; the listener closes after
  ``--drain-time-s``), then wait until no call is in progress (``downstream_rq_active``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence

from extauthz.parentdeath import die_with_parent

log = logging.getLogger("extauthz.grpcfront")
envoy_log = logging.getLogger("extauthz.envoy")

__all__ = ["EnvoySupervisor", "admin_request"]

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}
#: Envoy's log lines as ``[level][logger] message`` (parsed back into a level here)
LOG_FORMAT = "[%l][%n] %v"
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
#: a child that ran this long is considered healthy again (the backoff starts over)
_STABLE_SECONDS = 30.0
#: what a request to the admin socket may raise (not listening yet, slow, cut short)
_ADMIN_ERRORS = (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError)


#: the kernel kills Envoy when extauthz dies (no orphan)
_die_with_parent = die_with_parent(signal.SIGKILL)


async def admin_request(socket_path: str, method: str, target: str,
                        timeout: float = 2.0) -> tuple[int, bytes]:
    """One request to Envoy's admin on its Unix socket: ``(status, body)``."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(socket_path)
        try:
            writer.write(f"{method} {target} HTTP/1.1\r\nhost: admin\r\n"
                         "connection: close\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().lower()
            length = fields.get(b"content-length", b"")
            if length.isdigit():
                body = await reader.readexactly(int(length))
            elif fields.get(b"transfer-encoding") == b"chunked":
                body = await _read_chunked(reader)
            else:
                body = await reader.read()
        finally:
            writer.close()
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked HTTP/1.1 body (Envoy's admin sends ``/stats`` and ``/listeners`` so)."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()  # the CRLF after the chunk


class EnvoySupervisor:
    """One supervised Envoy process (restarted when it dies unasked)."""

    def __init__(self, argv: Sequence[str], admin_socket: str,
                 on_change: Callable[[bool], None], *, start_timeout: float = 20.0) -> None:
        self.argv = list(argv)
        self.admin_socket = admin_socket
        #: called with True when Envoy became ready, False when it went away
        self.on_change = on_change
        self.start_timeout = start_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None
        self._logs: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        """The running child's PID (None when none runs)."""
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Start Envoy and wait until its admin says it is ready (raises OSError if not)."""
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="envoy-supervisor")

    async def _spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent,
            start_new_session=True)
        assert self.process.stdout is not None
        task = asyncio.create_task(self._forward(self.process.stdout), name="envoy-log")
        self._logs.add(task)
        task.add_done_callback(self._logs.discard)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise OSError(f"the gRPC front's Envoy exited at start (status "
                              f"{self.process.returncode}); its log lines are above")
            with contextlib.suppress(*_ADMIN_ERRORS):
                status, _ = await admin_request(self.admin_socket, "GET", "/ready", 1.0)
                if status == 200:
                    self.ready = True
                    self.on_change(True)
                    log.info("gRPC front: Envoy pid %d ready", self.process.pid)
                    return
            await asyncio.sleep(0.05)
        await self._kill()
        raise OSError(f"the gRPC front's Envoy was not ready within {self.start_timeout:g} s")

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        """Envoy's log lines into extauthz's logging."""
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # a line over 64 KiB: skip it
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            level = logging.WARNING
            if text.startswith("["):
                name, _, rest = text[1:].partition("]")
                level = _LEVELS.get(name, logging.WARNING)
                text = rest
            envoy_log.log(level, "%s", text)

    async def _watch(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stopping:
            process = self.process
            assert process is not None
            started = time.monotonic()
            code = await process.wait()
            if self._stopping:
                return
            self.ready = False
            self.on_change(False)
            if time.monotonic() - started > _STABLE_SECONDS:
                backoff = _BACKOFF_FIRST
            log.error("gRPC front: Envoy exited (status %s); not ready; restarting in %.1f s",
                      code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            if self._stopping:
                return
            try:
                await self._spawn()
                self.restarts += 1
            except OSError as exc:
                log.error("gRPC front: %s", exc)

    async def active_calls(self, stat: str) -> int | None:
        """The value of the gauge ``stat`` from Envoy's admin (None when it cannot be read)."""
        try:
            status, body = await admin_request(self.admin_socket, "GET",
                                               f"/stats?filter=^{stat}$", 1.0)
        except _ADMIN_ERRORS:
            return None
        if status != 200:
            return None
        for line in body.decode("ascii", "replace").splitlines():
            name, _, value = line.partition(": ")
            if name == stat and value.strip().isdigit():
                return int(value)
        return None

    async def drain(self, active_stat: str, grace: float, drain_time: float) -> None:
        """Drain the listener: GOAWAY to every client, close the listener after
        ``drain_time``, and wait (up to ``grace`` in all) until no call is in progress."""
        if self.process is None or self.process.returncode is not None:
            return
        deadline = time.monotonic() + grace
        with contextlib.suppress(*_ADMIN_ERRORS):
            await admin_request(self.admin_socket, "POST", "/drain_listeners?graceful", 1.0)
        await asyncio.sleep(min(drain_time, grace))
        while time.monotonic() < deadline:
            if self.process.returncode is not None or not await self.active_calls(active_stat):
                return
            await asyncio.sleep(0.05)
        log.warning("gRPC front: calls still in progress after the grace period")

    async def stop(self) -> None:
        """Stop supervising and terminate Envoy (SIGTERM, then SIGKILL after 5 s)."""
        self._stopping = True
        self.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                await self._kill()
        if self._logs:
            await asyncio.wait(set(self._logs), timeout=1.0)

    async def _kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
