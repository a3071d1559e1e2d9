"""Run an aiohttp application on its own event loop in a daemon thread.

The demo and the end-to-end tests are synchronous programs that drive subprocesses (extauthz,
Envoy) and make blocking HTTP requests; the little servers they need in-process (the echo
upstream, the demo IdP) live on a private loop in a background thread so that the caller never has
to be async. Every public method is thread-safe: it schedules work on the private loop and waits.

The server can be taken down and brought back on the same port (:meth:`down` / :meth:`up`), which
is how tests simulate an outage: ``down`` closes the listening socket *and* every open connection
(keep-alive connections would otherwise keep working), so clients see connection refused.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

#: How long a stopping server waits for in-flight handlers (a "slow" IdP must not stall a test).
SHUTDOWN_TIMEOUT = 0.5
#: the longest header line the demo upstreams accept: Envoy's default header-block limit
UPSTREAM_HEADER_LIMIT = 60 * 1024


class BackgroundApp:
    """An aiohttp app on ``host:port`` served from a background thread.

    ``app_factory`` is called for every (re)start, so keep state outside the application object.
    ``port=0`` picks a free port on the first start; restarts reuse the same port.
    """

    def __init__(
        self,
        app_factory: Callable[[], web.Application],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "app",
    ) -> None:
        self._factory = app_factory
        self.host = host
        self.port = port
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    def start(self) -> BackgroundApp:
        """Start the thread and the server; raises OSError (e.g. port taken) synchronously."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()
                loop.close()

            thread = threading.Thread(target=run, name=f"{self.name}-loop", daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def up(self) -> None:
        """(Re)start listening on the port (no-op when already listening)."""
        self.call(self._up())

    def down(self) -> None:
        """Stop listening and close every open connection (no-op when already down)."""
        self.call(self._down())

    def close(self) -> None:
        """Stop the server and the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.call(self._down(), timeout=SHUTDOWN_TIMEOUT + 5)
            self.call(self._cancel_tasks(), timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            self._loop = self._thread = None

    def __enter__(self) -> BackgroundApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the server's loop and return its result (from any other thread)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not started")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _up(self) -> None:
        if self._runner is not None:
            return
        # Header lines up to Envoy's own limit (60 KiB by default): an upstream behind Envoy sees
        # what Envoy forwards, e.g. an XFCC with a client certificate after two hops (> 8 KiB,
        # aiohttp's default, which answered 400 for a large certificate)
        runner = web.AppRunner(self._factory(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                               max_line_size=UPSTREAM_HEADER_LIMIT,
                               max_field_size=UPSTREAM_HEADER_LIMIT)
        await runner.setup()
        # Bind ourselves: SO_REUSEADDR lets a restart reuse the port at once (TIME_WAIT), and no
        # SO_REUSEPORT so a second process cannot silently share it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise OSError(
                exc.errno, f"{self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner

    async def _cancel_tasks(self) -> None:
        """Cancel what is still running on the loop (e.g. a deliberately slow handler)."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _down(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
