"""The built-in gRPC server: Envoy's ``Authorization/Check`` and ``grpc.health.v1.Health`` over
HTTP/2, in the process, on the same event loop as everything else (``serve --grpc-server
native``, docs/grpc-native.md).

Why it exists: serving a unary call through grpc.aio costs ~4x the decision itself (its
C core, thread hops and Python wrappers per call), and the Envoy front (``--grpc-server envoy``)
halves that but adds a second process and a hop. An HTTP/2 connection from Envoy carrying
unary calls needs little of HTTP/2: this server reads frames, decodes header blocks with
``hpack`` (remembering the blocks Envoy repeats), and answers each call with one write. The
check itself goes through the same :class:`~extauthz.edge.CheckEdge` as every transport
(:data:`~extauthz.edge.GRPC_BYTES`: serialized CheckRequest in, serialized CheckResponse out).

Bounds: those of :class:`~extauthz.netlimits.GrpcLimits` (connections, streams per connection,
message and metadata sizes, handshake, idle and age timeouts), enforced here
(:mod:`extauthz.h2grpc.connection`) and by a sweeper once a second.

SECURITY: like the grpc.aio server, whoever can connect to this port can ask for checks with
any CheckRequest (client address, peer certificate, route): bind it to loopback (the default)
or a pod-local address, as docs/deployment.md says.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from extauthz import eager, tracing
from extauthz.edge import GRPC_BYTES, CheckEdge
from extauthz.grpcfront import codec
from extauthz.h2grpc import frames as f
from extauthz.h2grpc.connection import (
    INVALID_ARGUMENT,
    OK,
    UNAVAILABLE,
    Call,
    H2Connection,
    Handler,
)
from extauthz.metrics import CheckRecorder
from extauthz.netlimits import ByteBudget, ConnectionGuard, DeadlineSweeper, GrpcLimits, Refused

if TYPE_CHECKING:
    from extauthz.decisionlog import DecisionLog
    from extauthz.health import HealthService
    from extauthz.pipeline import Engine

__all__ = ["PORT_LABEL", "NativeGrpcServer"]

log = logging.getLogger("extauthz.h2grpc")

#: the ``port`` label of this listener's connection metrics
PORT_LABEL = "grpc"
NOT_FOUND = 5
#: bytes of requests all connections may hold while they arrive (ByteBudget): four of the
#: largest messages
_BUDGET_MESSAGES = 4
#: seconds stop() lets closed connections flush what they were sent before aborting them
CLOSE_WAIT = 1.0


class NativeGrpcServer:
    """Serves the gRPC Check API and health over HTTP/2 on a TCP port."""

    def __init__(self, engine: Engine, decision_log: DecisionLog | None, *,
                 health: HealthService, limits: GrpcLimits) -> None:
        limits.check()
        self.limits = limits
        self.health = health
        self.edge = CheckEdge(engine, GRPC_BYTES, CheckRecorder(engine.metrics, decision_log))
        self._answer = self.edge.answer
        metrics = engine.metrics
        self.port_label = PORT_LABEL
        self.guard = ConnectionGuard(PORT_LABEL, limits.max_connections,
                                     metrics.connections, metrics.connections_refused)
        self.closed = metrics.connections_closed
        self.reading_paused = metrics.reading_paused.labels(PORT_LABEL)
        self.refused_streams = metrics.connections_refused.labels("grpc_stream")
        self.connections: set[H2Connection] = set()
        self.budget = ByteBudget(_BUDGET_MESSAGES * limits.max_receive_message_bytes,
                                 lambda: len(self.connections))
        self.tasks: set[asyncio.Future[Any]] = set()
        #: set on stop: new calls are refused (GOAWAY), calls in flight finish
        self.draining = False
        self.methods: dict[str, Handler] = {
            codec.CHECK_PATH: self._check,
            codec.HEALTH_CHECK_PATH: self._health_check,
            codec.HEALTH_WATCH_PATH: self._health_watch,
        }
        #: methods whose call runs to its end when the client resets its stream (a check: its
        #: decision is recorded whole, and it counts against the stream limit until it ends);
        #: the others (Watch) are cancelled
        self.complete_on_reset: set[str] = {codec.CHECK_PATH}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper = DeadlineSweeper(
            lambda: self.connections,
            tick=min(1.0, limits.handshake_timeout / 4, limits.idle_timeout / 4),
            closed=metrics.connections_closed, port_label=PORT_LABEL)

    # -- methods -----------------------------------------------------------------------------

    def _check(self, call: Call) -> Coroutine[Any, Any, None]:
        return self._checked(call)

    async def _checked(self, call: Call) -> None:
        if tracing.state.tracer is not None:
            # Envoy's ext_authz span comes as the call's traceparent: the check's parent
            tracing.set_transport_parent(call.header("traceparent"))
        answer = await self._answer(call.message)
        call.finish(OK, answer)

    def _health_check(self, call: Call) -> None:
        try:
            service = codec.decode_health_service(call.message)
        except DecodeError:
            call.finish(INVALID_ARGUMENT, None, "not a HealthCheckRequest")
            return
        status = self.health.status(service)
        if status is None:
            call.finish(NOT_FOUND, None, "unknown service")
        else:
            call.finish(OK, codec.encode_health_response(status))

    def _health_watch(self, call: Call) -> Coroutine[Any, Any, None]:
        return self._watched(call)

    async def _watched(self, call: Call) -> None:
        try:
            service = codec.decode_health_service(call.message)
        except DecodeError:
            call.finish(INVALID_ARGUMENT, None, "not a HealthCheckRequest")
            return

        async def send(status: int) -> None:
            call.send(codec.encode_health_response(status))

        await self.health.watch(service, send)
        call.finish(OK)

    # -- running -----------------------------------------------------------------------------

    def start_call(self, coro: Coroutine[Any, Any, Any], path: str) -> asyncio.Future[Any]:
        """Run a method's coroutine: a check eagerly (one that never suspends needs no task,
        :mod:`extauthz.eager`), a Watch as a task of its own (it lives on)."""
        assert self.loop is not None
        if path == codec.CHECK_PATH:
            future: asyncio.Future[Any] = eager.start(coro, self.loop)
        else:
            future = self.loop.create_task(coro)
        if not future.done():
            self.tasks.add(future)
        return future

    def _protocol(self) -> asyncio.BaseProtocol:
        if self.draining or not self.guard.admit():
            return Refused()
        return H2Connection(self)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        loop = self.loop = asyncio.get_running_loop()
        # reuse_port off: a second instance on the same port must fail loudly, not share it
        self._server = await loop.create_server(self._protocol, host, port, reuse_port=False,
                                                backlog=1024)
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._sweeper.start()
        return self.port

    async def stop(self, grace: float) -> None:
        """Drain: GOAWAY to every connection (no new call), wait up to ``grace`` seconds for
        the calls in flight, then close what is left (abort, after :data:`CLOSE_WAIT`, what a
        client does not read)."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        for conn in list(self.connections):
            conn.go_away(f.NO_ERROR, "server stopping")
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                if stream.call is not None:
                    stream.call.finish(UNAVAILABLE, None, "the server stopped")
        await asyncio.sleep(0)  # let the last answers reach the transports
        await self._sweeper.stop()
        for conn in list(self.connections):
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
        # a close() waits for the transport's buffer to drain: a client that does not read
        # would keep its connection (and, on Python 3.12+, wait_closed(), which waits for every
        # connection) for ever -- the sweeper that would abort it is stopped
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_WAIT
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # connection_lost runs on the next turn
        await self._server.wait_closed()
        self._server = None
