"""Apply the rate limits of a request to its (otherwise allowed) decision.

Which limits apply: the route's ``limits``, then the consumer's own ``limits``, then those of the
consumer's ``plan`` (each name once). Only requests that would be allowed are counted: a 401, 403
or 400 consumes no quota. Each limit decides independently and atomically over its windows (a
request one limit denies still counts against the others that allowed it, as in Envoy's global
rate limiting); memory limits are decided inline, Redis limits concurrently (one round trip each,
overlapping).

The answer: every limit allows -> the allowed decision, with ``RateLimit-Policy`` / ``RateLimit``
response headers for limits with ``headers_on_allow`` (Envoy adds them to the client's response:
``response_headers_to_add``); a limit denies -> **429** ``rate_limited`` with ``Retry-After`` and
both fields; a fail-closed limit whose Redis is unreachable -> **503** ``rate_limit_unavailable``
(a 429 from another limit wins: it is a definite answer). Every limit's result is counted in
``extauthz_ratelimit_checks_total{limit,result}``, recorded in the decision log (``rate_limit``)
and, with ``check --explain``, in the trace.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.decision import Decision, GrpcCode, deny
from extauthz.errors import Reason
from extauthz.explain import Trace
from extauthz.metrics import Metrics
from extauthz.ratelimit import headers
from extauthz.ratelimit.gcra import Verdict, Window, verdict
from extauthz.ratelimit.keys import PARTS, KeyContext, Part, render, subject
from extauthz.ratelimit.memory import MemoryStore
from extauthz.ratelimit.metrics import RESULTS, checks_counter
from extauthz.ratelimit.redis_store import RedisStore
from extauthz.types import Identity, RequestView

#: the dynamic metadata key of the descriptors (namespace ``envoy.filters.http.ext_authz``)
METADATA_KEY = "ratelimit"


@dataclass(frozen=True, slots=True)
class Limit:
    """One compiled limit."""

    name: str
    #: (part name, function) — the key's parts
    parts: tuple[tuple[str, Part], ...]
    windows: tuple[Window, ...]
    #: shared in Redis (else this replica's :attr:`memory` decides)
    redis: bool
    fail_open: bool
    headers_on_allow: bool
    #: the limit's store (memory), or its fail-open fallback (Redis); None: Redis, fail closed
    memory: MemoryStore | None
    policies: tuple[str, ...]
    fallback_policies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitResult:
    """What one limit said about one request."""

    limit: Limit
    #: one of :data:`extauthz.ratelimit.metrics.RESULTS`
    result: str
    verdict: Verdict | None = None

    @property
    def denied(self) -> bool:
        return self.result in ("limited", "fallback_limited")

    @property
    def policies(self) -> tuple[str, ...]:
        return self.limit.fallback_policies if self.result.startswith("fallback") \
            else self.limit.policies

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit.name, "result": self.result,
                               "key": [name for name, _ in self.limit.parts],
                               "store": "redis" if self.limit.redis else "memory"}
        if self.verdict is not None:
            out["windows"] = [
                {"policy": s.window.policy, "requests": s.window.requests,
                 "seconds": s.window.seconds, "burst": s.window.burst,
                 "remaining": s.remaining, "reset": s.reset, "retry_after": s.retry_after}
                for s in self.verdict.windows]
        return out


class RateLimiter:
    """The rate limits of one snapshot (see the module docstring)."""

    def __init__(
        self,
        *,
        limits: Mapping[str, Limit],
        route_limits: Mapping[str, tuple[Limit, ...]],
        consumer_limits: Mapping[str, tuple[Limit, ...]],
        consumer_plans: Mapping[str, str],
        descriptors: Sequence[str],
        redis: RedisStore | None,
        metrics: Metrics,
    ) -> None:
        self.limits = limits
        self.route_limits = route_limits
        self.consumer_limits = consumer_limits
        self.consumer_plans = consumer_plans
        self.descriptors = tuple(descriptors)
        self.redis = redis
        counter = checks_counter(metrics)
        self._counted = {(name, r): counter.labels(name, r) for name in limits for r in RESULTS}

    async def start(self) -> None:
        if self.redis is not None:
            await self.redis.start()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    def inherit(self, previous: RateLimiter) -> None:
        """Keep the in-memory counts of limits that kept their name and windows (reload)."""
        for name, limit in self.limits.items():
            old = previous.limits.get(name)
            if old is not None and old.memory is not None and limit.memory is not None:
                limit.memory.inherit(old.memory)

    def select(self, route: str, identity: Identity | None) -> tuple[Limit, ...]:
        """The limits that apply to a request on ``route`` by ``identity`` (in order, once)."""
        selected = self.route_limits.get(route, ())
        consumer = identity.consumer if identity is not None else None
        if consumer:
            extra = self.consumer_limits.get(consumer, ())
            if extra:
                names = {limit.name for limit in selected}
                selected = selected + tuple(x for x in extra if x.name not in names)
        return selected

    async def apply(self, decision: Decision, view: RequestView, params: Mapping[str, str],
                    trace: Trace | None = None) -> Decision:
        """The final decision for an allowed ``decision`` (module docstring)."""
        identity = decision.identity
        limits = self.select(decision.route, identity)
        consumer = (identity.consumer or "") if identity is not None else ""
        plan = self.consumer_plans.get(consumer, "") if consumer else ""
        ctx = KeyContext(view, identity, decision.route, plan, params)
        results = await self._decide(limits, ctx) if limits else []
        for result in results:
            self._counted[result.limit.name, result.result].inc()
        if trace is not None:
            trace.notes.extend(_explain(results))
            trace.rate_limits.extend(r.to_json() for r in results)
        limited = [r for r in results if r.denied]
        if limited:
            return _too_many(decision, view, results, limited)
        if any(r.result == "unavailable" for r in results):
            return _unavailable(decision, view, results)
        return self._allowed(decision, ctx, results)

    async def _decide(self, limits: Sequence[Limit], ctx: KeyContext) -> list[LimitResult]:
        results: list[LimitResult] = []
        shared: list[tuple[Limit, str]] = []
        for limit in limits:
            key = render(limit.parts, ctx)
            if key is None:
                results.append(LimitResult(limit, "skipped"))
            elif limit.redis or limit.memory is None:
                shared.append((limit, key))
            else:
                allowed, delays = limit.memory.hit(key)
                results.append(LimitResult(limit, "allowed" if allowed else "limited",
                                           verdict(allowed, delays, limit.windows)))
        if shared:
            results.extend(await self._shared(shared))
        return results

    async def _shared(self, shared: Sequence[tuple[Limit, str]]) -> list[LimitResult]:
        """The Redis limits of one request, in one call (see RedisStore.hit_many)."""
        if self.redis is None:  # compile prevents it; fail closed all the same
            answers: list[tuple[bool, list[int]] | None] = [None] * len(shared)
        else:
            answers = await self.redis.hit_many(
                [(limit.name, key, limit.windows) for limit, key in shared])
        results = []
        for (limit, key), answer in zip(shared, answers, strict=True):
            if answer is not None:
                allowed, delays = answer
                results.append(LimitResult(limit, "allowed" if allowed else "limited",
                                           verdict(allowed, delays, limit.windows)))
            elif limit.fail_open and limit.memory is not None:
                allowed, delays = limit.memory.hit(key)
                results.append(LimitResult(
                    limit, "fallback_allowed" if allowed else "fallback_limited",
                    verdict(allowed, delays, limit.memory.windows)))
            else:
                results.append(LimitResult(limit, "unavailable"))
        return results

    def _allowed(self, decision: Decision, ctx: KeyContext,
                 results: Sequence[LimitResult]) -> Decision:
        shown = [r for r in results if r.verdict is not None and r.limit.headers_on_allow]
        response = list(decision.response_headers)
        response.extend(_fields(shown))
        metadata = decision.dynamic_metadata
        if self.descriptors:
            entries = _descriptors(self.descriptors, ctx)
            if entries:
                metadata = {**metadata, METADATA_KEY: entries}
        if not results and metadata is decision.dynamic_metadata:
            return decision
        return dataclasses.replace(decision, response_headers=tuple(response),
                                   dynamic_metadata=metadata, rate_limit=_log(results))


def _fields(results: Sequence[LimitResult]) -> list[tuple[str, str]]:
    policies: list[str] = []
    states: list[str] = []
    for r in results:
        if r.verdict is not None:
            policies.extend(r.policies)
            states.extend(headers.state_items(r.verdict))
    return headers.fields(policies, states)


def _log(results: Sequence[LimitResult]) -> Mapping[str, Any]:
    """The decision log's ``rate_limit`` field: each limit's result and smallest remaining."""
    return {r.limit.name: ({"result": r.result, "remaining": r.verdict.remaining}
                           if r.verdict is not None else {"result": r.result})
            for r in results}


def _too_many(decision: Decision, view: RequestView, results: Sequence[LimitResult],
              limited: Sequence[LimitResult]) -> Decision:
    names = [r.limit.name for r in limited]
    denied = deny(429, GrpcCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED, decision.route,
                  "rate limit exceeded: " + ", ".join(names),
                  request_id=view.request_id, identity=decision.identity)
    retry = max([1, *(r.verdict.retry_after for r in limited if r.verdict is not None)])
    body = json.loads(denied.body)
    # draft-ietf-httpapi-ratelimit-headers §"Quota Exceeded": the policies that were exceeded
    body["violated-policies"] = [s.window.policy for r in limited if r.verdict is not None
                                 for s in r.verdict.windows if s.retry_after]
    return dataclasses.replace(
        denied,
        response_headers=(*denied.response_headers, (headers.RETRY_AFTER, str(retry)),
                          *_fields(results)),
        body=json.dumps(body, separators=(",", ":")),
        rate_limit=_log(results),
    )


def _unavailable(decision: Decision, view: RequestView,
                 results: Sequence[LimitResult]) -> Decision:
    names = [r.limit.name for r in results if r.result == "unavailable"]
    denied = deny(503, GrpcCode.UNAVAILABLE, Reason.RATE_LIMIT_UNAVAILABLE, decision.route,
                  "rate limit state unavailable", request_id=view.request_id,
                  identity=decision.identity)
    return dataclasses.replace(denied, rate_limit=_log(results),
                               description=f"rate limit state unavailable: {', '.join(names)}")


def _descriptors(names: Sequence[str], ctx: KeyContext) -> dict[str, str]:
    out = {}
    for name in names:
        value = subject(ctx) if name == "subject" else PARTS[name](ctx)
        if value:
            out[name] = value
    return out


def _explain(results: Sequence[LimitResult]) -> list[str]:
    lines = []
    for r in results:
        text = f"rate limit {r.limit.name} ({'redis' if r.limit.redis else 'memory'}, key " \
               f"{'+'.join(n for n, _ in r.limit.parts)}): {r.result}"
        if r.verdict is not None:
            text += "; " + ", ".join(
                f"{s.window.policy} {s.remaining}/{s.window.requests} left per "
                f"{s.window.seconds}s" + (f", retry after {s.retry_after}s" if s.retry_after
                                          else "")
                for s in r.verdict.windows)
        lines.append(text)
    return lines
