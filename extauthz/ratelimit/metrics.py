"""Prometheus metrics of the rate limits, registered on the process's registry.

``extauthz_ratelimit_checks_total{limit, result}``: one per limit that applied (or was skipped)
per request. ``limit`` is a configured limit name, ``result`` one of :data:`RESULTS` — both
bounded. The families live on the :class:`~extauthz.metrics.Metrics` registry, created on first
use (one set per registry, so tests with their own registry get their own).
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter

from extauthz.metrics import Metrics

#: allowed / limited (429): decided by the limit's store; skipped: a key part had no value;
#: unavailable: Redis failed and the limit fails closed (503); fallback_allowed /
#: fallback_limited: Redis failed and the limit's local fallback decided (fail open)
RESULTS = ("allowed", "limited", "skipped", "unavailable", "fallback_allowed",
           "fallback_limited")

_FAMILIES: weakref.WeakKeyDictionary[Metrics, Counter] = weakref.WeakKeyDictionary()


def checks_counter(metrics: Metrics) -> Counter:
    """``extauthz_ratelimit_checks_total`` on ``metrics``' registry."""
    counter = _FAMILIES.get(metrics)
    if counter is None:
        counter = Counter(
            "extauthz_ratelimit_checks",
            "Rate-limit decisions by limit name and result (allowed, limited, skipped, "
            "unavailable, fallback_allowed, fallback_limited).",
            ["limit", "result"],
            registry=metrics.registry,
        )
        _FAMILIES[metrics] = counter
    return counter
