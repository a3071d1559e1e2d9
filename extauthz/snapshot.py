"""Compile a validated configuration into an immutable :class:`Snapshot`.

Cross-references (route -> authenticator names, consumers) are checked here, and every
authenticator is built here, so a snapshot that exists is one that can serve. All problems are
collected and raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from extauthz.authn.base import Authenticator
from extauthz.authn.context import BuildContext
from extauthz.authn.dispatch import needs_dispatch
from extauthz.authn.registry import Factory, default_registry
from extauthz.authn.reload_state import ReloadState
from extauthz.authz.policy import Policy, PolicyError
from extauthz.clock import Clock, system_clock
from extauthz.config.idtoken_schema import RouteIdentityTokenSpec
from extauthz.config.loader import LoadedConfig, load_config
from extauthz.config.schema import AuthnSpec, Consumer, RouteSpec, Settings
from extauthz.errors import ConfigError, ConfigIssue
from extauthz.external.metrics import external_metrics
from extauthz.external.stage import ExternalHub
from extauthz.idtoken import IdentityTokens, build_identity_tokens
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundPolicy
from extauthz.ratelimit.compile import build_rate_limiter
from extauthz.ratelimit.limiter import RateLimiter
from extauthz.routing import HostMatcher, PathMatcher, Route, RouteTable, compile_template
from extauthz.state.provision import SnapshotState, build_state
from extauthz.state.redis import StateHub

log = logging.getLogger("extauthz.config")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one request needs, compiled and immutable. Swapped whole on reload."""

    settings: Settings
    routes: RouteTable
    authenticators: Mapping[str, Authenticator]
    digest: str
    source: str
    #: files whose change should trigger a reload (config, includes, key material)
    files: tuple[Path, ...] = ()
    #: shared state (Redis client, revocation lists); started and closed with the snapshot
    state: SnapshotState | None = None
    #: rate limits (rate_limiting); None when nothing is limited
    rate_limits: RateLimiter | None = None
    #: AuthZEN PDPs and metadata lookups (their sessions close with the snapshot)
    external: ExternalHub | None = None
    #: the signed identity token (``settings.identity_token``); None when off
    identity_tokens: IdentityTokens | None = None

    async def start(self) -> None:
        """Start background work of every authenticator (JWKS refresh, ...)."""
        if self.state is not None:
            await self.state.start()
        if self.rate_limits is not None:
            await self.rate_limits.start()
        await asyncio.gather(*(a.start() for a in self.authenticators.values()))

    def adopt_external_answers(self, previous: Snapshot) -> None:
        """Take over what the external stage fetched for the snapshot this one replaces (PDP and
        lookup answers, docs/authzen.md), before :meth:`start`.

        Authenticators need no hand-over: what they must keep across a reload (last good JWKS
        keys, introspection answers, the in-memory replay cache) lives in the process's
        :class:`~extauthz.authn.reload_state.ReloadState`, which they read when built/started.
        """
        if self.external is not None and previous.external is not None:
            self.external.adopt(previous.external)

    def inherit_from(self, previous: Snapshot) -> None:
        """Carry the rate limiters' state over (called before the old snapshot closes)."""
        if self.rate_limits is not None and previous.rate_limits is not None:
            self.rate_limits.inherit(previous.rate_limits)

    async def close(self) -> None:
        """Stop background work; errors are logged, never raised (closing must finish)."""
        results = await asyncio.gather(
            *(a.close() for a in self.authenticators.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("error while closing an authenticator: %s", type(result).__name__)
        if self.rate_limits is not None:
            await self.rate_limits.close()
        if self.external is not None:
            await self.external.close()
        if self.state is not None:
            try:
                await self.state.close()
            except Exception as exc:
                log.warning("error while closing the shared state: %s", type(exc).__name__)


def settle_heap() -> None:
    """Move everything alive now (the serving snapshot, imported modules) out of the cyclic GC.

    A snapshot with 100 000 API keys is a few hundred thousand container objects that live until
    the next reload. Left in the collector's generations, every full collection walks them all:
    measured 67-107 ms per full collection with 100 000 keys on the benchmark machine, a stall of
    every check in flight whenever the server's per-check garbage triggers one (a p99 spike, not
    a throughput loss). ``gc.freeze()`` moves the surviving objects to the permanent generation,
    which collections skip (the same collection then takes < 0.1 ms); reference counting still
    frees them when the snapshot is dropped. The server calls this after every load and reload:
    ``gc.unfreeze()`` and one full collection first, so cycles left by the previous snapshot (or
    by compiling) are reclaimed rather than frozen for good. That one collection is the only
    pause, once per reload.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _where(source: str, path: str) -> str:
    return f"{source}: {path}" if source else path


class _Compiler:
    def __init__(
        self,
        loaded: LoadedConfig,
        metrics: Metrics,
        clock: Clock,
        registry: Mapping[str, Factory],
        state_hub: StateHub | None = None,
        reload_state: ReloadState | None = None,
    ) -> None:
        self.loaded = loaded
        self.settings = loaded.main.settings
        self.issues: list[ConfigIssue] = []
        self.registry = registry
        self.consumers = self._collect_consumers()
        self.state = build_state(
            self.settings, base_dir=loaded.path.parent, metrics=metrics, clock=clock,
            hub=state_hub, issues=self.issues,
        )
        self.ctx = BuildContext(
            settings=self.settings,
            metrics=metrics,
            base_dir=loaded.path.parent,
            consumers=tuple(self.consumers),
            clock=clock,
            state=self.state,
            outbound=self._outbound(loaded.path.parent),
            reload_state=reload_state if reload_state is not None else ReloadState(),
        )
        self.authenticators: dict[str, Authenticator] = {}
        self.external = ExternalHub.build(self.settings, self.ctx.outbound,
                                          external_metrics(metrics.registry), self.issues)

    def _outbound(self, base_dir: Path) -> OutboundPolicy:
        try:
            return OutboundPolicy.from_spec(self.settings.outbound, base_dir)
        except ValueError as exc:
            self.issues.append(ConfigIssue("settings.outbound.ca_file", str(exc)))
            return OutboundPolicy()

    def _parts(self) -> list[tuple[str, object]]:
        parts: list[tuple[str, object]] = [("", self.loaded.main)]
        parts.extend((f.source, f.data) for f in self.loaded.fragments)
        return parts

    def _collect_consumers(self) -> list[Consumer]:
        consumers: list[Consumer] = []
        seen: set[str] = set()
        for source, part in self._parts():
            for i, consumer in enumerate(part.consumers):  # type: ignore[attr-defined]
                if consumer.name in seen:
                    self.issues.append(ConfigIssue(
                        _where(source, f"consumers[{i}].name"),
                        f"duplicate consumer {consumer.name!r}"))
                    continue
                seen.add(consumer.name)
                ids = [k.id for k in consumer.keys]
                for j, key_id in enumerate(ids):
                    if key_id in ids[:j]:
                        self.issues.append(ConfigIssue(
                            _where(source, f"consumers[{i}].keys[{j}].id"),
                            f"duplicate key id {key_id!r}"))
                consumers.append(consumer)
        return consumers

    def _build(self, name: str, spec: AuthnSpec, where: str) -> Authenticator | None:
        factory = self.registry.get(spec.kind)
        if factory is None:
            self.issues.append(ConfigIssue(where, f"unsupported authentication kind {spec.kind}"))
            return None
        inner = getattr(spec, spec.kind)
        try:
            return factory(name, inner, self.ctx)
        except ValueError as exc:
            self.issues.append(ConfigIssue(f"{where}.{spec.kind}", str(exc)))
            return None

    def compile(self) -> Snapshot:
        # Named authenticators first: routes refer to them.
        for source, part in self._parts():
            for name, spec in part.authenticators.items():  # type: ignore[attr-defined]
                where = _where(source, f"authenticators.{name}")
                if name in self.authenticators:
                    self.issues.append(ConfigIssue(where, f"duplicate authenticator {name!r}"))
                    continue
                if spec.ref is not None:
                    self.issues.append(ConfigIssue(where, "must define a kind, not a reference"))
                    continue
                built = self._build(name, spec, where)
                if built is not None:
                    self.authenticators[name] = built
        routes: list[Route] = []
        names: set[str] = set()
        token_routes: list[tuple[str, str, bool, RouteIdentityTokenSpec | None]] = []
        for source, part in self._parts():
            for i, spec in enumerate(part.routes):  # type: ignore[attr-defined]
                where = _where(source, f"routes[{i}]")
                if spec.name in names:
                    self.issues.append(ConfigIssue(f"{where}.name",
                                                   f"duplicate route {spec.name!r}"))
                    continue
                names.add(spec.name)
                token_routes.append((spec.name, where, spec.public, spec.identity_token))
                route = self._route(spec, where)
                if route is not None:
                    routes.append(route)
        rate_limits, rate_limit_files = self._rate_limits()
        tokens = build_identity_tokens(self.settings.identity_token, token_routes,
                                       self.loaded.path.parent, self.issues, clock=self.ctx.clock,
                                       identity_prefix=self.settings.identity_header_prefix,
                                       metrics=self.ctx.metrics)
        if self.issues:
            raise ConfigError(self.issues)
        return Snapshot(
            settings=self.settings,
            routes=RouteTable(routes, self.settings.route_key),
            authenticators=MappingProxyType(dict(self.authenticators)),
            digest=self.loaded.digest,
            source=str(self.loaded.path),
            files=(self.loaded.files + self._authenticator_files() + self.state.files()
                   + rate_limit_files + (tokens.files if tokens is not None else ())),
            state=self.state,
            rate_limits=rate_limits,
            external=None if self.external.empty else self.external,
            identity_tokens=tokens,
        )

    def _rate_limits(self) -> tuple[RateLimiter | None, tuple[Path, ...]]:
        """``rate_limiting`` and the ``limits``/``plan`` of routes and consumers."""
        consumers = []
        routes = []
        for source, part in self._parts():
            for i, consumer in enumerate(part.consumers):  # type: ignore[attr-defined]
                consumers.append((_where(source, f"consumers[{i}]"), consumer))
            for i, spec in enumerate(part.routes):  # type: ignore[attr-defined]
                routes.append((_where(source, f"routes[{i}]"), spec.name, spec.limits,
                               spec.public))
        return build_rate_limiter(
            self.loaded.main.rate_limiting, consumers=consumers, routes=routes,
            fallback_redis=self.settings.redis, base_dir=self.loaded.path.parent,
            metrics=self.ctx.metrics, issues=self.issues,
        )

    def _authenticator_files(self) -> tuple[Path, ...]:
        """Key material files (htpasswd, trust bundles) the authenticators declare in their
        :class:`~extauthz.authn.base.CredentialSurface`: watched for hot reload too."""
        return tuple(p for a in self.authenticators.values() for p in a.surface.source_files)

    def _route(self, spec: RouteSpec, where: str) -> Route | None:
        ok = True
        authenticators: list[Authenticator] = []
        for j, authn in enumerate(spec.authn):
            at = f"{where}.authn[{j}]"
            if authn.ref is not None:
                found = self.authenticators.get(authn.ref)
                if found is None:
                    self.issues.append(ConfigIssue(at, f"unknown authenticator {authn.ref!r}"))
                    ok = False
                else:
                    authenticators.append(found)
                continue
            inline_name = f"{spec.name}.{j}"
            built = self._build(inline_name, authn, at)
            if built is None:
                ok = False
            else:
                self.authenticators[inline_name] = built
                authenticators.append(built)
        template = None
        if spec.match.template is not None:
            try:
                template = compile_template(spec.match.template)
            except ValueError as exc:
                self.issues.append(ConfigIssue(f"{where}.match.template", str(exc)))
                ok = False
        policy: Policy | None = None
        try:
            policy = Policy.from_spec(
                spec.authz,
                route=spec.name,
                consumers={c.name for c in self.consumers},
                params=frozenset(template.groupindex) if template is not None else frozenset(),
                external=self.external,
            )
        except PolicyError as exc:
            self.issues.extend(ConfigIssue(f"{where}.authz.{path}", message)
                               for path, message in exc.issues)
            ok = False
        if policy is not None and spec.public and not policy.empty:
            self.issues.append(ConfigIssue(
                f"{where}.authz", "a public route has no identity to authorize: its policy "
                "would never be evaluated (remove authz or public)"))
            ok = False
        if not ok or policy is None:
            return None
        strip = spec.strip_credentials
        return Route(
            name=spec.name,
            hosts=HostMatcher.build(spec.match.hosts),
            path=PathMatcher(exact=spec.match.path, prefix=spec.match.prefix, template=template),
            methods=frozenset(spec.match.methods),
            public=spec.public,
            authenticators=tuple(authenticators),
            policy=policy,
            strip_credentials=self.settings.strip_credentials if strip is None else strip,
            require_all=spec.authn_mode == "all_of",
            bearer_dispatch=needs_dispatch(authenticators),
        )


def compile_config(
    loaded: LoadedConfig,
    metrics: Metrics,
    *,
    clock: Clock = system_clock,
    registry: Mapping[str, Factory] | None = None,
    state_hub: StateHub | None = None,
    reload_state: ReloadState | None = None,
) -> Snapshot:
    """Compile ``loaded`` into a Snapshot; raises ConfigError listing every problem.

    ``state_hub``: the process's Redis clients (the server passes one so a reload keeps the
    connection pool); without it the snapshot gets a private one. ``reload_state``: what
    outlives one configuration in this process (the server passes its own, so a reload keeps
    last good keys, introspection answers and replay caches); without it, nothing is carried.
    """
    return _Compiler(
        loaded, metrics, clock, registry or default_registry(), state_hub, reload_state
    ).compile()


def load_snapshot(
    path: str | Path,
    metrics: Metrics,
    *,
    clock: Clock = system_clock,
    registry: Mapping[str, Factory] | None = None,
    state_hub: StateHub | None = None,
    reload_state: ReloadState | None = None,
) -> Snapshot:
    """Read, validate and compile the configuration at ``path``.

    A :class:`ConfigError` carries the files the attempt read or referred to (``files``).
    """
    loaded = load_config(path)
    try:
        return compile_config(
            loaded, metrics, clock=clock, registry=registry, state_hub=state_hub,
            reload_state=reload_state,
        )
    except ConfigError as exc:
        exc.files = loaded.files + referenced_files(loaded)
        raise


def referenced_files(loaded: LoadedConfig) -> tuple[Path, ...]:
    """Every path a configuration names in a ``*_file`` setting (key files, htpasswd, CA
    bundles, the revocation file ...), resolved against its directory: what a refused
    configuration may be waiting on."""
    base = loaded.path.parent
    found: list[Path] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                    found.append(Path(value) if Path(value).is_absolute() else base / value)
                else:
                    walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(loaded.main.model_dump())
    for fragment in loaded.fragments:
        walk(fragment.data.model_dump())
    return tuple(dict.fromkeys(found))
