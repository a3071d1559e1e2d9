"""Process lifecycle: load config, serve gRPC (Check + Health) and HTTP admin, stop gracefully.

Reload: the configuration files (and key material the authenticators read) are polled for
changes (see :mod:`extauthz.reload`), and SIGHUP reloads at once. A configuration that fails
validation is refused whole and the previous one keeps serving. The new snapshot's
authenticators take over what outbound calls fetched for the old one (last good JWKS keys and
discovery result, introspection answers) from the server's
:class:`~extauthz.authn.reload_state.ReloadState` when they start, so a reload during an IdP
outage keeps serving within ``max_stale_seconds`` of the last successful fetch.

Readiness (``/readyz`` 200, gRPC health SERVING, ``extauthz_ready`` 1) needs a valid
configuration loaded and, when it verifies JWTs with remote keys (``jwks.url``/``discovery``), the
first successful JWKS fetch of every such issuer (every authenticator is ``ready()``): a pod
whose IdP is unreachable at start stays unready (and keeps retrying in the background) instead
of answering 503 ``jwks_unavailable``. This holds for the first readiness only; a later IdP
outage is the per-route ``max_stale_seconds`` business, not a reason to pull every replica out
of service at once. A configuration that fails validation at start is fatal (exit code 1):
there is nothing to serve. Liveness (``/healthz``) depends on nothing but the event loop
answering.

Stop sequence on SIGTERM/SIGINT: health -> NOT_SERVING and ``/readyz`` -> 503 first (so Envoy and
Kubernetes stop sending), then the gRPC server stops accepting and waits up to the grace period
for in-flight checks, then background work (JWKS refresh) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from extauthz import logsetup
from extauthz.admin import make_admin_app
from extauthz.authn.reload_state import ReloadState
from extauthz.config.schema import GRPC_MAX_RECEIVE_BYTES, MAX_CHECK_PAYLOAD_BYTES
from extauthz.decisionlog import DecisionLog
from extauthz.errors import ConfigError
from extauthz.grpcfront.front import (
    BRIDGE_CONNECTIONS,
    ENVOY,
    NATIVE,
    FrontOptions,
    GrpcFront,
)
from extauthz.h2grpc import NativeGrpcServer
from extauthz.health import NOT_SERVING, SERVING, HealthService
from extauthz.heaptrim import HeapTrimmer
from extauthz.http_authz import HttpAuthzServer, HttpLimits
from extauthz.idtoken import IdentityTokens
from extauthz.metrics import Metrics
from extauthz.netlimits import (
    AdminLimits,
    Bounded,
    ConnectionGuard,
    DeadlineSweeper,
    GrpcLimits,
    bounded_factory,
    check_fd_budget,
    raise_nofile_limit,
)
from extauthz.pipeline import Engine
from extauthz.reload import ConfigWatcher
from extauthz.snapshot import Snapshot, load_snapshot, settle_heap
from extauthz.state.redis import StateHub

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("extauthz.server")

#: ``--grpc-address off``: serve only the HTTP ext_authz transport. grpcio's aio machinery costs
#: CPU on every event-loop turn even with no gRPC traffic (~20 µs per HTTP check, measured with
#: ``scripts/bench profile --transport http``), so an HTTP-only deployment turns it off.
GRPC_OFF = "off"

#: The gRPC service name Envoy's ``grpc_health_check`` may ask about (besides the empty name).
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How to run the server."""

    config_path: str
    grpc_address: str = "127.0.0.1:9001"
    http_address: str = "127.0.0.1:9090"
    grace_seconds: float = 10.0
    #: write one JSON line per decision to stdout
    decision_log: bool = True
    #: fraction of *allowed* decisions logged (denies are always logged)
    decision_log_sample_allowed: float = 1.0
    #: query parameters whose values the decision log keeps (default: no part of the query)
    decision_log_query_params: tuple[str, ...] = ()
    #: poll the configuration files this often for changes (0 disables; SIGHUP still works)
    watch_interval_seconds: float = 1.0
    #: also serve Envoy's HTTP ext_authz protocol here (:mod:`extauthz.http_authz`); None: off
    http_authz_address: str | None = None
    http_authz_path_prefix: str = "/check"
    #: header Envoy sets to the client address for the HTTP transport (None: no address)
    http_authz_source_header: str | None = None
    #: header Envoy sets to the client certificate for the HTTP transport (None: none)
    http_authz_peer_cert_header: str | None = None
    #: the header Envoy sets to ``%ROUTE_NAME%`` (the route name, as gRPC's context_extensions);
    #: None: off (extauthz's own matchers choose the route)
    http_authz_route_header: str | None = None
    #: Envoy's allowed_upstream_headers forwards a rewritten ``cookie``; False: such a decision
    #: is refused on the HTTP transport
    http_authz_cookie_forwarded: bool = False
    #: send the decision's dynamic metadata as x-extauthz-md-* headers (HTTP transport)
    http_authz_metadata: bool = False
    #: resource bounds of each listener (README "Resource model")
    http_authz_limits: HttpLimits = field(default_factory=HttpLimits)
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)
    admin_limits: AdminLimits = field(default_factory=AdminLimits)
    #: return freed heap memory to the system this often (0: never; see extauthz.heaptrim)
    heap_trim_seconds: float = 30.0
    #: what serves ``grpc_address``: ``grpcio`` (grpc.aio in this process) or ``envoy`` (an
    #: Envoy extauthz supervises, bridged to it: extauthz.grpcfront, docs/grpc-front.md)
    grpc_server: str = NATIVE
    grpc_front: FrontOptions = field(default_factory=FrontOptions)


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port); raises ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class Server:
    """One extauthz process: the Check service, health, and the admin endpoint."""

    def __init__(self, options: ServerOptions, metrics: Metrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or Metrics()
        self.engine = Engine(self.metrics)
        #: the process's Redis clients: a reload that keeps settings.redis keeps the pool
        #: what outlives a configuration in this process (last good JWKS keys, introspection
        #: answers, in-memory replay caches and attempt counters): one place, handed to every
        #: compile and to the state hub
        self.reload_state = ReloadState()
        self.state_hub = StateHub(self.metrics, self.reload_state)
        logsetup.attach_dropped_counter(self.metrics.log_dropped)
        self.health = HealthService()
        self._draining = False
        #: latched once the first snapshot's remote JWKS were fetched (see the module docstring)
        self._warm = False
        self._warming: asyncio.Task[None] | None = None
        #: health SERVING was announced (``/readyz`` follows it, so the two never disagree)
        self._serving = False
        self._stopped = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        #: the Envoy-fronted gRPC server (``grpc_server`` envoy)
        self.front: GrpcFront | None = None
        #: the built-in HTTP/2 gRPC server (``grpc_server`` native)
        self.native: NativeGrpcServer | None = None
        self._runner: web.AppRunner | None = None
        self.decision_log: DecisionLog | None = None
        self._reload_lock = asyncio.Lock()
        #: files of the last refused reload (watched until a configuration loads)
        self._refused_files: tuple[Path, ...] = ()
        self._watcher: ConfigWatcher | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.http_authz: HttpAuthzServer | None = None
        self.http_authz_port = 0
        self._admin_site: asyncio.Server | None = None
        self._admin_live: set[Bounded] = set()
        self._admin_sweeper: DeadlineSweeper | None = None
        self._trimmer = HeapTrimmer(options.heap_trim_seconds)

    @property
    def ready(self) -> bool:
        """What ``/readyz`` says: health was announced SERVING, the server is not draining,
        and the gRPC front's Envoy (if any) is up."""
        return self._serving and not self._draining and (self.front is None or self.front.ready)

    def _can_serve(self) -> bool:
        return (self.engine.snapshot is not None and not self._draining
                and self._authenticators_ready() and not self.state_hub.problems())

    def _authenticators_ready(self) -> bool:
        """True once every authenticator of the serving snapshot is ``ready()`` — every remote
        JWKS has loaded keys (latched)."""
        if not self._warm:
            snapshot = self.engine.snapshot
            if snapshot is None:
                return False
            if not all(a.ready() for a in snapshot.authenticators.values()):
                return False
            self._warm = True
        return True

    async def _become_ready(self, poll: float = 0.05) -> None:
        """Turn health SERVING, ``/readyz`` 200 and ``extauthz_ready`` 1 once a valid
        configuration is serving and its remote JWKS were fetched; gives up when draining."""
        while not self._can_serve():
            if self._draining:
                return
            await asyncio.sleep(poll)
        await self._set_serving(True)
        if self._draining:  # stop() began meanwhile; it sets NOT_SERVING after us
            return
        self._serving = True
        self.metrics.ready.set(1)
        log.info("ready")

    async def load(self) -> Snapshot:
        """Load, compile and start the configuration, then install it (raises ConfigError).

        Compiling runs in a worker thread so a reload never stalls checks on the event loop;
        the new snapshot is started (JWKS fetched) before it is swapped in, and the previous one
        is closed only after the swap, so no check ever sees a half-built configuration.
        """
        async with self._reload_lock:
            try:
                snapshot = await asyncio.to_thread(
                    load_snapshot, self.options.config_path, self.metrics,
                    state_hub=self.state_hub, reload_state=self.reload_state,
                )
            except Exception:
                self.metrics.config_loads.labels("failure").inc()
                raise
            current = self.engine.snapshot
            if current is not None:
                # The external stage's PDP / lookup answers. (The last good JWKS keys and
                # introspection answers come from self.reload_state when the new snapshot's
                # authenticators start: a reload during an IdP outage keeps serving them,
                # within max_stale counted from when they were fetched.)
                snapshot.adopt_external_answers(current)
            try:
                await snapshot.start()
            except BaseException:
                # half-started (a JWKS task running, a Redis client acquired): release it all
                await snapshot.close()
                self.metrics.config_loads.labels("failure").inc()
                raise
            current = self.engine.snapshot
            if current is not None:
                # Rate-limit state that must outlive a reload. No await between this and the
                # swap, so the old snapshot records nothing the new one misses. (Replay caches
                # are shared through the state hub / self.reload_state, not handed over.)
                snapshot.inherit_from(current)
            self._warn_if_grpc_refuses(snapshot)
            previous = self.engine.swap(snapshot)
            self.metrics.config_loads.labels("success").inc()
            self.metrics.config_last_success.set_to_current_time()
            self.metrics.config_info.info({"sha256": snapshot.digest})
            if previous is not None:
                await previous.close()
                del previous
            # the snapshot's objects out of the cyclic GC's generations (see settle_heap)
            settle_heap()
            return snapshot

    def _warn_if_grpc_refuses(self, snapshot: Snapshot) -> None:
        """settings.limits may allow a CheckRequest larger than the gRPC listener receives."""
        if self.options.grpc_address == GRPC_OFF:
            return
        limits = snapshot.settings.limits
        room = self.options.grpc_limits.max_receive_message_bytes - (
            GRPC_MAX_RECEIVE_BYTES - MAX_CHECK_PAYLOAD_BYTES)
        if limits.max_header_bytes + limits.max_body_bytes > room:
            log.warning("settings.limits.max_header_bytes + max_body_bytes (%d) exceed what "
                        "--grpc-max-receive-message-bytes %d leaves for them (%d): gRPC refuses "
                        "such CheckRequests before extauthz sees them (Envoy answers 403)",
                        limits.max_header_bytes + limits.max_body_bytes,
                        self.options.grpc_limits.max_receive_message_bytes, room)

    async def reload(self) -> bool:
        """Reload the configuration; on failure keep serving the previous one. Never raises."""
        try:
            snapshot = await self.load()
        except ConfigError as exc:
            self._refused_files = exc.files
            self.metrics.config_reloads.labels("failure").inc()
            log.error("configuration reload refused (%d problem(s)); the previous configuration "
                      "keeps serving", len(exc.issues))
            for issue in exc.issues:
                log.error("  %s", issue)
            return False
        except Exception:
            self.metrics.config_reloads.labels("failure").inc()
            log.exception("configuration reload failed; the previous configuration keeps serving")
            return False
        self._refused_files = ()
        self.metrics.config_reloads.labels("success").inc()
        log.info("configuration reloaded (sha256 %s)", snapshot.digest[:12])
        return True

    def _watched_files(self) -> tuple[Path, ...]:
        snapshot = self.engine.snapshot
        files = snapshot.files if snapshot is not None else (Path(self.options.config_path),)
        # After a refused reload, also the files that attempt read (a new include, a new key
        # file): fixing one of them in place must be noticed, not only the serving ones.
        return tuple(dict.fromkeys(files + self._refused_files))

    def _check_descriptors(self) -> None:
        """Raise the open-file limit to its hard limit and check the listeners' connection caps
        fit in it with room to spare (OSError otherwise: the process could not honour them)."""
        soft, _ = raise_nofile_limit()
        options = self.options
        caps = {"admin": options.admin_limits.max_connections}
        if options.grpc_address != GRPC_OFF and options.grpc_server == ENVOY:
            caps["grpc_bridge"] = BRIDGE_CONNECTIONS  # Envoy holds the clients' connections
        elif options.grpc_address != GRPC_OFF:
            caps["grpc"] = options.grpc_limits.max_connections
        if options.http_authz_address:
            caps["http_authz"] = options.http_authz_limits.max_connections
        try:
            check_fd_budget(caps, soft)
        except ValueError as exc:
            raise OSError(str(exc)) from None

    async def start(self) -> None:
        """Load the configuration and start listening. Raises on a bad config or a busy port."""
        self._check_descriptors()
        await self.load()
        if self.options.decision_log:
            self.decision_log = DecisionLog(
                sample_allowed=self.options.decision_log_sample_allowed,
                dropped=self.metrics.decision_log_dropped,
                query_params=self.options.decision_log_query_params,
            )
        if self.options.grpc_address != GRPC_OFF:
            if self.options.grpc_server == ENVOY:
                await self._start_front()
            elif self.options.grpc_server == NATIVE:
                await self._start_native()
            else:
                await self._start_grpc()
        if self.options.http_authz_address:
            self.http_authz = HttpAuthzServer(self.engine, self.decision_log,
                                              path_prefix=self.options.http_authz_path_prefix,
                                              limits=self.options.http_authz_limits,
                                              source_header=self.options.http_authz_source_header,
                                              peer_cert_header=(
                                                  self.options.http_authz_peer_cert_header),
                                              route_header=self.options.http_authz_route_header,
                                              cookie_forwarded=(
                                                  self.options.http_authz_cookie_forwarded),
                                              metadata=self.options.http_authz_metadata)
            self.http_authz_port = await self.http_authz.start(
                *split_address(self.options.http_authz_address))
        await self._start_admin()
        self._trimmer.start()
        if self._can_serve():
            await self._become_ready()
        else:
            problems = self.state_hub.problems()
            if problems:
                log.error("not ready: Redis cannot be trusted with extauthz's state: %s",
                          "; ".join(problems))
            else:
                log.warning("not ready until the first JWKS fetch of every remote issuer "
                            "succeeds")
            await self._set_serving(False)
            self._warming = asyncio.create_task(self._become_ready(), name="readiness")
        if self.options.watch_interval_seconds > 0:
            self._watcher = ConfigWatcher(
                self._watched_files, self.reload, interval=self.options.watch_interval_seconds
            )
            self._watcher.start()
        log.info("serving grpc=%s (%s) http=%s", self.options.grpc_address,
                 self.options.grpc_server, self.options.http_address)

    async def _start_admin(self) -> None:
        """The admin listener (aiohttp), behind a connection cap and a connection lifetime."""
        limits = self.options.admin_limits
        host, port = split_address(self.options.http_address)
        runner = web.AppRunner(make_admin_app(self.metrics, lambda: self.ready,
                                              self._identity_tokens), access_log=None,
                               keepalive_timeout=limits.idle_timeout, shutdown_timeout=1.0)
        await runner.setup()
        assert runner.server is not None
        guard = ConnectionGuard("admin", limits.max_connections, self.metrics.connections,
                                self.metrics.connections_refused)
        factory = bounded_factory(guard, runner.server, limits.max_connection_age,
                                  self._admin_live)
        self._runner = runner
        self._admin_site = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_port=False)
        sockets = self._admin_site.sockets or ()
        self.http_port = sockets[0].getsockname()[1] if sockets else port
        self._admin_sweeper = DeadlineSweeper(
            lambda: self._admin_live, tick=min(1.0, limits.max_connection_age / 4),
            closed=self.metrics.connections_closed, port_label="admin")
        self._admin_sweeper.start()

    async def _stop_admin(self) -> None:
        if self._admin_sweeper is not None:
            await self._admin_sweeper.stop()
        if self._admin_site is not None:
            self._admin_site.close()
        if self._runner is not None:
            await self._runner.cleanup()
        for conn in list(self._admin_live):
            conn.expire(float("inf"))

    def _identity_tokens(self) -> IdentityTokens | None:
        """The serving snapshot's identity tokens (the admin endpoint publishes their keys)."""
        snapshot = self.engine.snapshot
        return snapshot.identity_tokens if snapshot is not None else None

    async def _start_front(self) -> None:
        """The gRPC API through the supervised Envoy (extauthz.grpcfront)."""
        self.front = GrpcFront(self.engine, self.decision_log, health=self.health.status,
                               address=split_address(self.options.grpc_address),
                               limits=self.options.grpc_limits,
                               options=self.options.grpc_front,
                               on_change=self._front_changed)
        await self.front.start()
        self.grpc_port = self.front.port

    def _front_changed(self, up: bool) -> None:
        """The front's Envoy came up or went away: ``extauthz_ready`` follows (``/readyz``
        reads :attr:`ready`, which includes it)."""
        self.metrics.ready.set(1 if self.ready else 0)
        if not up and not self._draining:
            log.error("not ready: the gRPC front's Envoy is down")

    async def _start_native(self) -> None:
        """The gRPC API from the built-in HTTP/2 server (extauthz.h2grpc)."""
        self.native = NativeGrpcServer(self.engine, self.decision_log, health=self.health,
                                       limits=self.options.grpc_limits)
        host, port = split_address(self.options.grpc_address)
        self.grpc_port = await self.native.start(host, port)

    async def _start_grpc(self) -> None:
        # grpcio is an optional dependency (extauthz[grpcio]): imported only for this server
        import grpc
        from grpc_health.v1 import health_pb2_grpc

        from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
        from extauthz.servicer import AuthorizationServicer

        limits = self.options.grpc_limits
        # SO_REUSEPORT off: a second instance on the same port must fail loudly, not share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *limits.channel_options()])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(self.engine, self.decision_log), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.grpc_port = server.add_insecure_port(self.options.grpc_address)
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.options.grpc_address}")
        await server.start()
        self._grpc = server

    async def _set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for service in ("", AUTHZ_SERVICE):
            await self.health.set(service, status)

    async def stop(self) -> None:
        """Drain and stop (idempotent)."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        self.metrics.ready.set(0)
        if self._warming is not None:
            self._warming.cancel()
        if self._watcher is not None:
            await self._watcher.stop()
        await self._set_serving(False)
        # Watch streams send NOT_SERVING and end: the gRPC server's grace period waits for
        # every open call, and a Watch never ends by itself
        await self.health.end()
        # both transports drain at once, each within the grace period
        await asyncio.gather(
            *([self.http_authz.stop(self.options.grace_seconds)] if self.http_authz else []),
            *([self._grpc.stop(self.options.grace_seconds)] if self._grpc is not None else []),
            *([self.front.stop(self.options.grace_seconds)] if self.front is not None else []),
            *([self.native.stop(self.options.grace_seconds)] if self.native is not None else []),
        )
        await self._stop_admin()
        await self._trimmer.stop()
        snapshot = self.engine.snapshot
        if snapshot is not None:
            await snapshot.close()
        await self.state_hub.close()
        if self.decision_log is not None:
            self.decision_log.close()
        self._stopped.set()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        """Start, then serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def on_sighup() -> None:
            task = asyncio.ensure_future(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        await self.start()
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()
