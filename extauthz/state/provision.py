"""The shared-state part of one compiled configuration: what ``BuildContext.state`` provides.

Built while the configuration is compiled (no I/O besides reading the revocation file and the
Redis password, so it can run in the compile worker thread); started and closed with the
snapshot. With ``settings.redis`` the authenticators get Redis-backed stores; without it they get
the process's in-memory stores (:mod:`extauthz.state.local`, kept across reloads).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

from extauthz.authn.attempts import AttemptLimiter
from extauthz.authn.nonces import NonceStore
from extauthz.authn.secrets import load_secret
from extauthz.clock import Clock
from extauthz.config.schema import RedisSpec, Settings, check_redis_url
from extauthz.errors import ConfigIssue
from extauthz.metrics import Metrics
from extauthz.state.redis import RedisClient, RedisTarget, StateHub, client_key
from extauthz.state.revocation import (
    RedisRevocations,
    RevocationEntries,
    RevocationList,
    load_revocation_file,
)
from extauthz.state.stores import RedisAttemptLimiter, RedisNonceStore


def resolve_target(
    spec: RedisSpec, base_dir: Path, environ: Mapping[str, str] | None = None
) -> RedisTarget:
    """The connection target of ``spec``: reads ``url_env`` and the password now.

    ``ValueError`` messages start with the key they are about and never contain the URL or the
    password.
    """
    env = os.environ if environ is None else environ
    url = spec.url
    if spec.url_env is not None:
        url = env.get(spec.url_env)
        if not url:
            raise ValueError(f"url_env: environment variable {spec.url_env} is not set")
        try:
            has_password, tls = check_redis_url(url)
        except ValueError as exc:
            raise ValueError(f"url_env: {spec.url_env}: {exc}") from None
        if has_password and (spec.password_file or spec.password_env):
            raise ValueError(f"url_env: {spec.url_env} carries a password and password_file/"
                             "password_env is set too; keep one")
        if spec.tls_ca_file is not None and not tls:
            raise ValueError(f"tls_ca_file: needs a rediss:// URL in {spec.url_env}")
    if url is None:
        raise ValueError("url: required (or url_env)")
    password: str | None = None
    if spec.password_file is not None or spec.password_env is not None:
        try:
            raw = load_secret(file=spec.password_file, env=spec.password_env,
                              base_dir=base_dir, environ=env)
        except ValueError as exc:
            where = "password_file" if spec.password_file is not None else "password_env"
            raise ValueError(f"{where}: {exc}") from None
        password = raw.decode("utf-8", "surrogateescape")
    ca_file = None
    if spec.tls_ca_file is not None:
        ca_path = Path(spec.tls_ca_file)
        ca_file = str(ca_path if ca_path.is_absolute() else base_dir / ca_path)
        if not Path(ca_file).is_file():
            raise ValueError(f"tls_ca_file: {ca_file}: no such file")
    return RedisTarget(
        url=url,
        password=password,
        tls_ca_file=ca_file,
        timeout_seconds=spec.timeout_seconds,
        max_connections=spec.max_connections,
        health_check_interval_seconds=spec.health_check_interval_seconds,
        assume_noeviction=spec.assume_noeviction,
    )


class SnapshotState:
    """Implements :class:`~extauthz.authn.shared_state.StateProvider` for one snapshot.

    ``client`` and the revocation mirror belong to the :class:`StateHub` (shared with the other
    snapshots of the process); :meth:`start` / :meth:`close` acquire and release them.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        hub: StateHub | None = None,
        client: RedisClient | None = None,
        prefix: str = "extauthz:",
        revocations: RevocationList | None = None,
        files: tuple[Path, ...] = (),
        sync_seconds: float = 1.0,
        max_stale_seconds: float = 30.0,
    ) -> None:
        self._clock = clock
        self._hub = hub
        self.client = client
        self._prefix = prefix
        self._revocations = revocations
        self._files = files
        self._timings = {"sync_seconds": sync_seconds, "max_stale_seconds": max_stale_seconds}
        self._held: list[Hashable] = []

    @property
    def revocations(self) -> RevocationList | None:
        return self._revocations

    def nonce_store(self, owner: str) -> NonceStore | None:
        if self.client is None:
            return self._hub.local.nonce_store(self._clock) if self._hub is not None else None
        return RedisNonceStore(self.client, prefix=self._prefix, owner=owner, clock=self._clock)

    def attempt_limiter(
        self, owner: str, *, max_failures: int, window_seconds: float, max_keys: int
    ) -> AttemptLimiter | None:
        if self.client is None:
            if self._hub is None:
                return None
            return self._hub.local.attempt_limiter(
                owner, max_failures=max_failures, window_seconds=window_seconds,
                max_keys=max_keys, clock=self._clock,
            )
        return RedisAttemptLimiter(
            self.client, prefix=self._prefix, max_failures=max_failures,
            window_seconds=window_seconds,
        )

    def files(self) -> tuple[Path, ...]:
        """Files to watch for hot reload (the revocation file, the Redis password file and CA
        bundle)."""
        return self._files

    async def start(self) -> None:
        """Connect (through the hub: one pool per process) and do the first revocation sync
        (never raises for a Redis that is down: the checks that need it answer 503)."""
        if self._held or self._hub is None or self.client is None:
            return
        keys: list[Hashable] = [client_key(self.client.target)]
        shared = self._revocations.shared if self._revocations is not None else None
        if shared is not None:
            shared.configure(**self._timings)
            keys.append(mirror_key(self.client.target, self._prefix))
        for key in keys:
            await self._hub.acquire(key)
            self._held.append(key)
        await self.client.watch_epoch(self._prefix)

    async def close(self) -> None:
        held, self._held = self._held, []
        if self._hub is None:
            return
        for key in reversed(held):
            await self._hub.release(key)


def mirror_key(target: RedisTarget, prefix: str) -> Hashable:
    return ("revocations", target, prefix)


def build_state(
    settings: Settings,
    *,
    base_dir: Path,
    metrics: Metrics,
    clock: Clock,
    hub: StateHub | None,
    issues: list[ConfigIssue],
    environ: Mapping[str, str] | None = None,
) -> SnapshotState:
    """The :class:`SnapshotState` of ``settings``; problems are appended to ``issues``."""
    files: list[Path] = []
    entries: RevocationEntries | None = None
    if settings.revocation_file is not None:
        path = Path(settings.revocation_file)
        if not path.is_absolute():
            path = base_dir / path
        files.append(path)
        try:
            entries = load_revocation_file(path)
        except ValueError as exc:
            issues.append(ConfigIssue("settings.revocation_file", str(exc)))
    if hub is None:
        hub = StateHub(metrics)  # standalone compile: in-memory state of its own
    spec = settings.redis
    client: RedisClient | None = None
    shared: RedisRevocations | None = None
    prefix = "extauthz:"
    timings: dict[str, float] = {}
    if spec is not None:
        prefix = spec.key_prefix
        timings = {
            "sync_seconds": spec.revocation_sync_seconds,
            "max_stale_seconds": spec.revocation_max_stale_seconds,
        }
        # A rotated password or CA bundle is picked up by the file watch (a reload).
        for name in (spec.password_file, spec.tls_ca_file):
            if name is not None:
                files.append(Path(name) if Path(name).is_absolute() else base_dir / name)
        try:
            target = resolve_target(spec, base_dir, environ)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            issues.append(ConfigIssue(f"settings.redis.{key}", message))
        else:
            client = hub.client(target)
            if spec.revocation:
                found = client
                shared = hub.shared(
                    mirror_key(target, prefix),
                    lambda: RedisRevocations(
                        found, prefix=prefix, clock=clock, metrics=metrics, **timings
                    ),
                )
    revocations = None
    if entries is not None or shared is not None:
        revocations = RevocationList(entries or RevocationEntries(), clock=clock, shared=shared)
    return SnapshotState(
        clock=clock, hub=hub, client=client, prefix=prefix, revocations=revocations,
        files=tuple(files), **timings,
    )
