"""Compile ``rate_limiting`` (and the ``limits`` / ``plan`` of consumers and routes) into a
:class:`~extauthz.ratelimit.limiter.RateLimiter`, reporting every problem as a located
:class:`~extauthz.errors.ConfigIssue`.

No I/O besides reading the Redis password file (so it can run in the compile worker thread); the
Redis client is created when the snapshot starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from extauthz.config.schema import (
    Consumer,
    RateLimitCelKey,
    RateLimiting,
    RateLimitSpec,
    RateLimitWindow,
    RedisSpec,
)
from extauthz.errors import ConfigIssue
from extauthz.metrics import Metrics
from extauthz.ratelimit import headers
from extauthz.ratelimit.gcra import Window
from extauthz.ratelimit.keys import PARTS, Part, compile_cel_part
from extauthz.ratelimit.limiter import Limit, RateLimiter
from extauthz.ratelimit.memory import MemoryStore
from extauthz.ratelimit.redis_store import RedisStore
from extauthz.state.provision import resolve_target

WHERE = "rate_limiting"
#: key parts that only an authenticated request has
_IDENTITY_PARTS = frozenset({"consumer", "subject", "api_key", "plan"})


def _windows(name: str, specs: Sequence[RateLimitWindow], where: str,
             issues: list[ConfigIssue]) -> tuple[Window, ...]:
    out: list[Window] = []
    for i, w in enumerate(specs):
        policy = w.name or (name if len(specs) == 1 else f"{name}-{w.seconds}s")
        if any(x.policy == policy for x in out):
            issues.append(ConfigIssue(f"{where}[{i}].name",
                                      f"two windows of one limit are both named {policy!r}"))
        out.append(Window(w.requests, w.seconds, w.burst or w.requests, policy))
    return tuple(out)


def _limit(name: str, spec: RateLimitSpec, where: str,
           issues: list[ConfigIssue]) -> Limit | None:
    parts: list[tuple[str, Part]] = []
    ok = True
    for i, part in enumerate(spec.key):
        if isinstance(part, RateLimitCelKey):
            try:
                parts.append((f"cel{i}", compile_cel_part(part.cel)))
            except ValueError as exc:
                issues.append(ConfigIssue(f"{where}.key[{i}].cel", str(exc)))
                ok = False
        else:
            parts.append((part, PARTS[part]))
    windows = _windows(name, spec.windows, f"{where}.windows", issues)
    fallback = _windows(name, spec.fallback, f"{where}.fallback", issues) \
        if spec.fallback is not None else windows
    if not ok:
        return None
    redis = spec.store == "redis"
    fail_open = redis and spec.on_redis_error == "fail_open"
    memory = None
    if not redis:
        memory = MemoryStore(windows, spec.max_keys)
    elif fail_open:
        memory = MemoryStore(fallback, spec.max_keys)
    return Limit(
        name=name, parts=tuple(parts), windows=windows, redis=redis, fail_open=fail_open,
        headers_on_allow=spec.headers_on_allow, memory=memory,
        policies=tuple(headers.policy_item(w) for w in windows),
        fallback_policies=tuple(headers.policy_item(w) for w in fallback),
    )


def _names(names: Sequence[str], limits: Mapping[str, Limit], where: str,
           issues: list[ConfigIssue], known: Mapping[str, object]) -> tuple[Limit, ...]:
    out: list[Limit] = []
    for i, name in enumerate(names):
        if name not in known:
            issues.append(ConfigIssue(f"{where}[{i}]", f"unknown rate limit {name!r} (not in "
                                                       "rate_limiting.limits)"))
        elif name in limits and all(x.name != name for x in out):
            out.append(limits[name])
    return tuple(out)


def build_rate_limiter(
    spec: RateLimiting,
    *,
    consumers: Sequence[tuple[str, Consumer]],
    routes: Sequence[tuple[str, str, Sequence[str], bool]],
    fallback_redis: RedisSpec | None,
    base_dir: Path,
    metrics: Metrics,
    issues: list[ConfigIssue],
) -> tuple[RateLimiter | None, tuple[Path, ...]]:
    """The limiter (None when nothing is rate limited and no descriptors are asked for) and the
    files to watch. ``consumers``: (location, consumer); ``routes``: (location, name, limits,
    public)."""
    limits: dict[str, Limit] = {}
    for name, limit_spec in spec.limits.items():
        built = _limit(name, limit_spec, f"{WHERE}.limits.{name}", issues)
        if built is not None:
            limits[name] = built
    plans = {
        plan: _names(names, limits, f"{WHERE}.plans.{plan}", issues, spec.limits)
        for plan, names in spec.plans.items()
    }
    route_limits = {}
    for where, route, names, public in routes:
        if names:
            route_limits[route] = _names(names, limits, f"{where}.limits", issues, spec.limits)
        if public:
            for i, limit in enumerate(route_limits.get(route, ())):
                needs = [name for name, _ in limit.parts if name in _IDENTITY_PARTS]
                if needs:
                    # it would silently never apply: there is no identity on a public route
                    issues.append(ConfigIssue(
                        f"{where}.limits[{i}]", f"rate limit {limit.name!r} is keyed by "
                        f"{needs[0]}, which a public route never has (it would never apply)"))
    consumer_limits: dict[str, tuple[Limit, ...]] = {}
    consumer_plans: dict[str, str] = {}
    for where, consumer in consumers:
        own = _names(consumer.limits, limits, f"{where}.limits", issues, spec.limits)
        if consumer.plan is not None:
            if consumer.plan not in spec.plans:
                issues.append(ConfigIssue(f"{where}.plan", f"unknown plan {consumer.plan!r} "
                                                           "(not in rate_limiting.plans)"))
            else:
                consumer_plans[consumer.name] = consumer.plan
                mine = {x.name for x in own}
                own = own + tuple(x for x in plans[consumer.plan] if x.name not in mine)
        if own:
            consumer_limits[consumer.name] = own
    redis, files = _redis(spec, limits, fallback_redis, base_dir, issues)
    if not limits and not spec.descriptors:
        return None, files
    return RateLimiter(
        limits=limits, route_limits=route_limits, consumer_limits=consumer_limits,
        consumer_plans=consumer_plans, descriptors=spec.descriptors, redis=redis,
        metrics=metrics,
    ), files


def _redis(spec: RateLimiting, limits: Mapping[str, Limit], fallback: RedisSpec | None,
           base_dir: Path, issues: list[ConfigIssue]) -> tuple[RedisStore | None, tuple[Path, ...]]:
    shared = [name for name, limit in limits.items() if limit.redis]
    if not shared:
        return None, ()
    own = spec.redis
    connection = own.connection() if own is not None else fallback
    where = f"{WHERE}.redis" if own is not None else "settings.redis"
    if connection is None:
        issues.append(ConfigIssue(f"{WHERE}.limits.{shared[0]}.store",
                                  "store: redis needs rate_limiting.redis (or settings.redis)"))
        return None, ()
    files = tuple(base_dir / f if not Path(f).is_absolute() else Path(f)
                  for f in (connection.password_file, connection.tls_ca_file) if f is not None)
    try:
        target = resolve_target(connection, base_dir)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        issues.append(ConfigIssue(f"{where}.{key}", message))
        return None, files
    if own is not None:
        return RedisStore(target, cluster=own.cluster, prefix=own.key_prefix,
                          retry_interval=own.retry_interval_seconds), files
    return RedisStore(target, cluster=False, prefix=connection.key_prefix + "rl:",
                      retry_interval=connection.health_check_interval_seconds), files
