"""The gRPC health service (``grpc.health.v1.Health``: Check and Watch) with a drain.

Why not grpc_health's own servicer: its ``Watch`` streams never end, so a stopping server
waited its whole grace period for every open Watch (issue 13.9: SIGTERM took the full
``--grace-seconds`` while Envoy or a prober watched health). Here :meth:`HealthService.end`
(called on SIGTERM after NOT_SERVING was announced) lets every Watch send that last status and
finish with OK; a watcher whose client does not read is cancelled after a short bound.

The serving state itself needs no gRPC: the gRPC front (``--grpc-server envoy``) answers
``Health/Check`` from :meth:`HealthService.status` through Envoy, without grpcio installed;
grpc and grpc_health are imported only by the grpc.aio methods (:meth:`HealthService.Check`,
:meth:`HealthService.Watch`), which only the grpcio server calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

#: ``grpc.health.v1.HealthCheckResponse.ServingStatus`` values (the protobuf enum's numbers)
SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3


class HealthService:
    """Serving status per service name; Watch streams that end when the server drains.

    Duck-typed ``grpc.health.v1.Health`` servicer (``add_HealthServicer_to_server`` only needs
    the methods), so that this module imports no grpc.
    """

    def __init__(self) -> None:
        self._status: dict[str, Any] = {"": SERVING}
        #: one event per open Watch, set on every status change and on end()
        self._watches: dict[asyncio.Event, asyncio.Task[Any] | None] = {}
        self._ended = False

    async def set(self, service: str, status: Any) -> None:
        """Set the status of ``service`` and wake its watchers (ignored after :meth:`end`)."""
        if self._ended:
            return
        self._status[service] = status
        for event in self._watches:
            event.set()

    def status(self, service: str) -> int | None:
        """The serving status of ``service`` (None: unknown service)."""
        return self._status.get(service)

    async def Check(self, request: Any, context: Any) -> Any:
        import grpc
        from grpc_health.v1 import health_pb2

        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Any) -> Any:
        """Not offered (what grpc_health's base servicer answered): UNIMPLEMENTED."""
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    async def Watch(self, request: Any, context: Any) -> None:
        from grpc_health.v1 import health_pb2

        async def send(status: int) -> None:
            await context.write(health_pb2.HealthCheckResponse(status=status))

        await self.watch(request.service, send)

    async def watch(self, service: str, send: Callable[[int], Awaitable[None]]) -> None:
        """Send the status of ``service`` now and on every change, until :meth:`end` (the
        last status sent is then NOT_SERVING); must run in a task of its own (:meth:`end`
        waits for it, and cancels it when it is stuck on a client that does not read).
        Both gRPC servers' ``Watch`` use it."""
        changed = asyncio.Event()
        self._watches[changed] = asyncio.current_task()
        try:
            last = None
            while True:
                changed.clear()
                status = self._status.get(service, SERVICE_UNKNOWN)
                if status != last:
                    await send(status)
                    last = status
                if self._ended:
                    return  # the stream ends with OK right after its last status
                await changed.wait()
        finally:
            del self._watches[changed]

    async def end(self, timeout: float = 1.0) -> None:
        """End every Watch stream: each sends the current status (NOT_SERVING when draining)
        and finishes; those still running after ``timeout`` (a client that does not read) are
        cancelled. Later :meth:`set` calls are ignored."""
        self._ended = True
        for event in self._watches:
            event.set()
        tasks = {t for t in self._watches.values() if t is not None}
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout)
        for task in stuck:
            task.cancel()
