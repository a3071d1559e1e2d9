"""Connection bounds shared by extauthz's own HTTP listeners (HTTP ext_authz and admin).

What lives here, and why it is separate from the protocols:

* :class:`ConnectionGuard`: a cap on open connections per listener. The protocol factory given
  to ``loop.create_server`` asks the guard first; beyond the cap the connection is accepted and
  closed at once (the only way to refuse with asyncio: the kernel has already completed the
  handshake), and counted in ``extauthz_connections_refused_total{port}``. Open connections are
  the gauge ``extauthz_connections{port}``. Keeping each listener's cap well below the process's
  file-descriptor limit is what keeps a flood on one port from starving the others (issue 13.3:
  1 124 idle connections under ``nofile=1024`` stopped new gRPC channels and ``/healthz``).
* :class:`DeadlineSweeper`: one timer per listener that closes connections whose deadline has
  passed (time to send a request head, keep-alive idle time, unread output held too long). A
  deadline is a float a connection updates as it changes state (no timer per request: a
  ``call_later`` and its cancellation per request cost more than the sweep's O(connections)
  scan once per tick).
* :func:`raise_nofile_limit` and :func:`check_fd_budget`: the process's descriptor budget.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Gauge

from extauthz.config.schema import GRPC_MAX_RECEIVE_BYTES

log = logging.getLogger("extauthz.netlimits")

#: descriptors kept free for everything that is not a client connection: Redis pool, JWKS and
#: introspection fetches, the config watcher, log pipes, grpc's own
FD_RESERVE = 128


class Closable(Protocol):
    """What the sweeper needs of a connection."""

    @property
    def deadline(self) -> float:
        """Monotonic time after which the connection is closed (``inf``: no deadline now)."""

    def expire(self, now: float) -> str | None:
        """Close the connection because its deadline passed; the reason label (None: kept)."""


class ConnectionGuard:
    """Counts the open connections of one listener and refuses those beyond ``limit``."""

    def __init__(self, port_label: str, limit: int, open_gauge: Gauge,
                 refused: Counter) -> None:
        self.limit = limit
        self.open = 0
        self._gauge = open_gauge.labels(port_label)
        self._refused = refused.labels(port_label)

    def admit(self) -> bool:
        """True (and counted open) when below the cap; False (counted refused) otherwise."""
        if self.open >= self.limit:
            self._refused.inc()
            return False
        self.open += 1
        self._gauge.set(self.open)
        return True

    def release(self) -> None:
        """One admitted connection closed."""
        self.open -= 1
        self._gauge.set(self.open)


class ByteBudget:
    """Bytes of requests a listener holds while they arrive, with a soft server-wide bound.

    :meth:`charge` says False (close that connection) when the listener is over ``limit``
    *and* the connection holds more than its fair share (the limit divided among the open
    connections): the clients that fill the budget with slow uploads are the ones refused,
    while a small request on another connection still gets through. The bound is thereby soft,
    at most twice ``limit``: every connection kept is within its share.
    """

    __slots__ = ("_connections", "held", "limit")

    def __init__(self, limit: int, connections: Callable[[], int]) -> None:
        self.limit = limit
        self.held = 0
        self._connections = connections

    def charge(self, size: int, holder: int) -> bool:
        """Hold ``size`` more bytes for a connection now holding ``holder`` bytes (them
        included); False when that connection must be refused."""
        self.held += size
        limit = self.limit
        return self.held <= limit or holder * max(1, self._connections()) <= limit

    def release(self, size: int) -> None:
        """Bytes no longer held."""
        self.held -= size


class Refused(asyncio.Protocol):
    """The protocol of a connection beyond the cap: closed as soon as it is made (RST, so the
    socket is not kept in TIME_WAIT/FIN_WAIT by a client that never closes its side)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # linger 0: abort (RST) instead of an orderly close the client may never finish
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.close()


class Bounded(asyncio.Protocol):
    """Wraps a protocol we do not own (aiohttp's request handler): releases the guard when the
    connection ends, and closes the connection ``lifetime`` seconds after it was made (the
    admin port has no request-head timeout of its own; a bounded lifetime is what keeps a slow
    client from holding a slot for ever)."""

    def __init__(self, inner: asyncio.BaseProtocol, guard: ConnectionGuard,
                 lifetime: float, live: set[Bounded]) -> None:
        self._inner = inner
        self._guard = guard
        self._live = live
        self._lifetime = lifetime
        self._transport: asyncio.BaseTransport | None = None
        self.deadline = float("inf")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.deadline = time.monotonic() + self._lifetime
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[attr-defined, no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = float("inf")
        self._live.discard(self)
        try:
            self._inner.connection_lost(exc)
        finally:
            self._guard.release()

    def expire(self, now: float) -> str | None:
        """Close: the connection outlived its lifetime."""
        if self._transport is None or self._transport.is_closing():
            return None
        self.deadline = float("inf")
        self._transport.close()
        return "lifetime"


def bounded_factory(guard: ConnectionGuard, factory: Callable[[], asyncio.BaseProtocol],
                    lifetime: float, live: set[Bounded]) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for ``loop.create_server`` that admits through ``guard`` and wraps
    each admitted protocol in :class:`Bounded` (kept in ``live`` while open, for a sweeper)."""

    def make() -> asyncio.BaseProtocol:
        if not guard.admit():
            return Refused()
        wrapper = Bounded(factory(), guard, lifetime, live)
        live.add(wrapper)
        return wrapper

    return make


class DeadlineSweeper:
    """Closes connections past their deadline, checking every ``tick`` seconds."""

    def __init__(self, connections: Callable[[], Iterable[Closable]], tick: float,
                 closed: Counter, port_label: str) -> None:
        self._connections = connections
        self._tick = tick
        self._closed = closed
        self._label = port_label
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sweeping (on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="deadline-sweep")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> int:
        """Close every connection whose deadline is before ``now``; how many were closed."""
        closed = 0
        for conn in [c for c in self._connections() if c.deadline < now]:
            reason = conn.expire(now)
            if reason is not None:
                self._closed.labels(self._label, reason).inc()
                closed += 1
        return closed


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a container's soft limit is often 1024
    while the hard one is far higher); returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. RLIM_INFINITY refused: keep the soft one
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def check_fd_budget(caps: dict[str, int], soft_limit: int) -> None:
    """Raise ValueError when the connection caps, plus :data:`FD_RESERVE`, do not fit in the
    descriptor limit (a cap the process cannot honour is no bound at all)."""
    total = sum(caps.values())
    if total + FD_RESERVE > soft_limit:
        parts = ", ".join(f"{name} {cap}" for name, cap in caps.items())
        raise ValueError(
            f"the connection caps ({parts}: {total}) plus {FD_RESERVE} descriptors kept for "
            f"Redis, JWKS and logs exceed the open-file limit (RLIMIT_NOFILE {soft_limit}); "
            "lower the caps or raise the limit (ulimit -n / the container runtime)")


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """The resource bounds of the gRPC listener, enforced by the built-in server
    (:mod:`extauthz.h2grpc`) or by grpc's core (README "Resource model"). Envoy opens one
    HTTP/2 connection per worker thread and many streams on it; when a connection is at
    ``max_concurrent_streams`` Envoy opens another one."""

    #: connections; beyond it grpc's core closes new connections at once
    max_connections: int = 32
    #: MAX_CONCURRENT_STREAMS advertised in SETTINGS: streams one connection may have open.
    #: A stream whose answer is not read pins ~31 KiB (measured), so the worst case is
    #: max_connections x max_concurrent_streams x 31 KiB = 62 MiB with the defaults. (No
    #: server-wide cap on calls: grpc's maximum_concurrent_rpcs let one client that never reads
    #: fill it and turn every other client's checks into RESOURCE_EXHAUSTED.)
    max_concurrent_streams: int = 64
    #: one CheckRequest (headers + forwarded body) as received; settings.limits are validated
    #: against grpc's default (4 MiB), so lowering this below max_header_bytes + max_body_bytes
    #: + 256 KiB makes grpc refuse such requests (Envoy: 403 without a reason; a warning at load)
    max_receive_message_bytes: int = GRPC_MAX_RECEIVE_BYTES
    #: request metadata (HTTP/2 header block) of one call
    max_metadata_bytes: int = 64 * 1024
    #: a connection with no call for this long is closed (GOAWAY)
    idle_timeout: float = 300.0
    #: the HTTP/2 preface and SETTINGS must arrive within this (slow or silent clients)
    handshake_timeout: float = 10.0
    #: a connection is closed (GOAWAY, then ``age_grace`` for its calls) after this long,
    #: so one that piles up stuck streams does not live for ever
    max_connection_age: float = 1800.0
    connection_age_grace: float = 30.0

    def check(self) -> None:
        """Raise ValueError naming the first bound that is not positive."""
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"grpc {name} must be positive")

    def channel_options(self) -> list[tuple[str, int]]:
        """The grpc core channel arguments of these bounds."""
        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout * 1000)),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
            ("grpc.max_connection_age_ms", int(self.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(self.connection_age_grace * 1000)),
            # keepalive enforcement: pings without calls are a strike; 2 strikes -> GOAWAY
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_ping_strikes", 2),
        ]


@dataclass(frozen=True, slots=True)
class AdminLimits:
    """The resource bounds of the admin listener (``/metrics``, ``/healthz``, ``/readyz``)."""

    #: open connections; beyond it a new one is closed at once (refused, counted)
    max_connections: int = 64
    #: keep-alive idle time (aiohttp's keepalive_timeout; its default is an hour)
    idle_timeout: float = 15.0
    #: any connection is closed this long after it was made (there is no head timeout: this
    #: bounds how long a slow client holds a slot)
    max_connection_age: float = 30.0

    def check(self) -> None:
        """Raise ValueError naming the first bound that is not positive."""
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"admin {name} must be positive")
