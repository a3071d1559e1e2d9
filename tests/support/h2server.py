"""The built-in HTTP/2 gRPC server (extauthz.h2grpc) in process, on an event loop of its own
thread, for the protocol tests (tests/unit/test_h2grpc.py): raw-frame clients
(:mod:`tests.support.h2raw`), grpcio's sync client and ``h2load`` talk to it over loopback.

:class:`InProcessServer` serves :data:`CONFIG` (API key ``x-api-key: API_KEY`` on ``/api/``),
plus two methods for transport tests: :data:`ECHO_PATH` answers the request message as is, and
:data:`HOLD_PATH` answers OK only when the test releases it (:meth:`InProcessServer.release`).
``call(fn)`` runs ``fn`` on the server's loop and returns its result (to read the server's
state without racing it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.h2grpc import NativeGrpcServer
from extauthz.h2grpc.connection import OK, Call
from extauthz.health import HealthService
from extauthz.keys import hash_api_key
from extauthz.netlimits import GrpcLimits
from tests.support.configs import started_engine

__all__ = ["API_KEY", "CONFIG", "ECHO_PATH", "HOLD_PATH", "InProcessServer", "check_request"]

T = TypeVar("T")
API_KEY = "eak_h2grpc-test-key-0123456789abcdef"
CONFIG = f"""
authenticators:
  keys: {{api_key: {{sources: [{{header: x-api-key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(API_KEY)}"}}]
routes:
- name: api
  match: {{prefix: /api/}}
  authn: [keys]
"""
ECHO_PATH = "/test.Echo/Echo"
HOLD_PATH = "/test.Hold/Hold"


def check_request(path: str = "/api/x", key: str | None = API_KEY,
                  body: bytes = b"") -> external_auth_pb2.CheckRequest:
    """A CheckRequest for ``path`` (allowed with the default ``key``)."""
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = "GET", path, "api.example.com", "http"
    headers = {":method": "GET", ":path": path, ":authority": "api.example.com"}
    if key is not None:
        headers["x-api-key"] = key
    http.headers.update(headers)
    if body:
        http.raw_body = body
    return req


class InProcessServer:
    """A started :class:`NativeGrpcServer` on 127.0.0.1 (see module docstring)."""

    def __init__(self, directory: Path, limits: GrpcLimits | None = None) -> None:
        self.limits = limits or GrpcLimits()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="h2grpc",
                                        daemon=True)
        self._thread.start()
        self._stack = AsyncExitStack()
        self.held: list[tuple[Call, asyncio.Event]] = []
        self.health = HealthService()
        self.server: NativeGrpcServer = self.run(self._start(directory))
        self.port = self.server.port

    async def _start(self, directory: Path) -> NativeGrpcServer:
        engine = await self._stack.enter_async_context(started_engine(directory, CONFIG))
        server = NativeGrpcServer(engine, None, health=self.health, limits=self.limits)
        server.methods[ECHO_PATH] = lambda call: call.finish(OK, call.message)
        server.methods[HOLD_PATH] = self._hold
        server.complete_on_reset.add(HOLD_PATH)  # it stands for a check that takes long
        await server.start("127.0.0.1", 0)
        return server

    async def _hold(self, call: Call) -> None:
        event = asyncio.Event()
        self.held.append((call, event))
        await event.wait()
        call.finish(OK, b"held")

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the server's loop; its result."""
        async def run() -> T:
            return fn()
        return self.run(run())

    def release(self) -> None:
        """Let every held call answer."""
        def release_all() -> None:
            for _, event in self.held:
                event.set()
        self.call(release_all)

    def streams(self) -> int:
        """Streams open on all connections."""
        return self.call(lambda: sum(len(c.streams) for c in self.server.connections))

    def stop(self, grace: float = 1.0) -> None:
        """Drain and stop the server, then the loop."""
        try:
            self.release()
            self.run(self.server.stop(grace))
            self.run(self._stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
