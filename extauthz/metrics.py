"""Prometheus metrics. Every label value is bounded: route and authenticator names come from the
configuration, the rest are enums (:class:`~extauthz.errors.Reason`, outcomes, methods). Never a
path, subject or token.

A :class:`Metrics` instance owns its registry so tests can make a fresh one; the server uses one
per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

if TYPE_CHECKING:  # runtime imports would be circular (decisionlog needs nothing from here)
    from extauthz.decision import Decision
    from extauthz.decisionlog import DecisionLog
    from extauthz.types import RequestView

#: Latency buckets sized for an in-path authorizer: most checks are well under a millisecond.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

#: The route label used when no route matched.
NO_ROUTE_LABEL = "_no_route_"


class Metrics:
    """The metric families of extauthz, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "extauthz_checks",
            "Check decisions by route, outcome (allow, deny, shadow_deny) and reason code.",
            ["route", "outcome", "reason"],
            registry=r,
        )
        self.check_duration = Histogram(
            "extauthz_check_duration_seconds",
            "Time spent deciding one Check, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.authentications = Counter(
            "extauthz_authentications",
            "Credential verifications by method and result (ok or a reason code).",
            ["method", "result"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "extauthz_jwks_fetches",
            "JWKS / OIDC discovery fetches by issuer and result.",
            ["issuer", "result"],
            registry=r,
        )
        self.jwks_age = Gauge(
            "extauthz_jwks_age_seconds",
            "Seconds since the keys of an issuer were last fetched successfully.",
            ["issuer"],
            registry=r,
        )
        self.jwks_keys = Gauge(
            "extauthz_jwks_keys",
            "Number of usable keys currently held for an issuer.",
            ["issuer"],
            registry=r,
        )
        self.cache_requests = Counter(
            "extauthz_cache_requests",
            "Verified-credential cache lookups by cache and result (hit or miss).",
            ["cache", "result"],
            registry=r,
        )
        self.config_loads = Counter(
            "extauthz_config_loads",
            "Configuration loads by result (success or failure).",
            ["result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "extauthz_config_reload",
            "Configuration reloads (file change or SIGHUP) by result (success or failure).",
            ["result"],
            registry=r,
        )
        self.config_info = Info(
            "extauthz_config",
            "The configuration currently serving: SHA-256 of its files.",
            registry=r,
        )
        self.config_last_success = Gauge(
            "extauthz_config_last_success_timestamp_seconds",
            "When the configuration currently serving was loaded.",
            registry=r,
        )
        self.decision_log_dropped = Counter(
            "extauthz_decision_log_dropped",
            "Decision log lines dropped because the sink could not keep up.",
            registry=r,
        )
        self.shadow_routes = Gauge(
            "extauthz_shadow_routes",
            "Routes whose policy is in shadow mode (denials are counted, not enforced).",
            registry=r,
        )
        self.ready = Gauge(
            "extauthz_ready",
            "1 when a valid configuration is loaded and the server accepts checks.",
            registry=r,
        )
        self.redis_up = Gauge(
            "extauthz_redis_up",
            "1 while Redis (settings.redis) answers, 0 while not (shared-state checks get 503).",
            registry=r,
        )
        self.redis_errors = Counter(
            "extauthz_redis_errors",
            "Failed Redis operations by operation (nonce, attempts, revocation_sync, ping, ...).",
            ["op"],
            registry=r,
        )
        self.connections = Gauge(
            "extauthz_connections",
            "Open client connections by listener (http_authz, admin).",
            ["port"],
            registry=r,
        )
        self.connections_refused = Counter(
            "extauthz_connections_refused",
            "Connections closed as soon as accepted because the listener was at its cap.",
            ["port"],
            registry=r,
        )
        self.connections_closed = Counter(
            "extauthz_connections_closed",
            "Connections closed by a bound, by listener and reason (head_timeout, "
            "idle_timeout, unread_output, lifetime, too_large, buffer_budget, bad_request).",
            ["port", "reason"],
            registry=r,
        )
        self.reading_paused = Counter(
            "extauthz_reading_paused",
            "Times a connection stopped being read because its client left answers unread or "
            "pipelined too far ahead of them.",
            ["port"],
            registry=r,
        )
        self.log_dropped = Counter(
            "extauthz_log_dropped",
            "Log records dropped because stderr could not keep up (logging never blocks).",
            registry=r,
        )
        self.redis_data_loss = Counter(
            "extauthz_redis_data_loss",
            "Times Redis was seen to have lost extauthz's data (its epoch key changed or "
            "vanished).",
            registry=r,
        )
        self.revocation_age = Gauge(
            "extauthz_revocation_sync_age_seconds",
            "Seconds since the revocation lists were last synced from Redis.",
            registry=r,
        )
        #: ``authentications`` by (method, result), for the check path (see Children)
        self.authentication_results = Children(self.authentications)


class Children:
    """The labelled children of one metric family, kept once made.

    ``family.labels(...)`` takes a lock and validates its arguments on every call (~1 µs); on
    the check path the label values come from a small bounded set (configuration names and
    enums), so each child is looked up in a plain dict instead. Call it like ``labels`` with
    positional values: ``children("jwt", "ok").inc()``.
    """

    __slots__ = ("_family", "_made")

    def __init__(self, family: Any) -> None:
        self._family = family
        self._made: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._family.labels(*values)
        return child


class CheckRecorder:
    """Records a decided check: ``checks_total``, ``check_duration_seconds`` and the decision log.

    Both transports (gRPC and HTTP) finish every check through :meth:`finished`, so they count
    and log identically. The labelled metric children are kept (:class:`Children`): the set of
    (route, outcome, reason) is small and bounded by the configuration and two enums.
    """

    __slots__ = ("_checks", "_duration", "decision_log")

    def __init__(self, metrics: Metrics, decision_log: DecisionLog | None = None) -> None:
        self.decision_log = decision_log
        self._checks = Children(metrics.checks)
        self._duration = Children(metrics.check_duration)

    def finished(self, view: RequestView | None, decision: Decision, elapsed: float) -> None:
        """Count, time and log one decided check (``view`` is None when unreadable)."""
        self.record(decision.route, decision.outcome.value, decision.reason.value, elapsed)
        if self.decision_log is not None:
            self.decision_log.write(view, decision, elapsed)

    def record(self, route: str, outcome: str, reason: str, elapsed: float) -> None:
        """Count and time one check."""
        self._checks(route, outcome, reason).inc()
        self._duration(route).observe(elapsed)
