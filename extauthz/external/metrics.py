"""Metrics of PDP calls and metadata lookups, labelled by kind (``pdp``/``lookup``) and the
configured name (bounded: names come from the configuration, never from requests).

``extauthz_external_calls_total{kind,name,result}``   outbound calls by result (ok, denied for
                                                      a PDP ``false``, timeout, error, invalid,
                                                      refused, not_found)
``extauthz_external_call_duration_seconds{kind,name}`` time of each outbound call
``extauthz_external_cache_total{kind,name,result}``   hit, negative_hit, shared, miss, overloaded
``extauthz_external_fallbacks_total{kind,name,action}`` failures answered by a fallback

Registered once per :class:`~prometheus_client.CollectorRegistry` (a reload builds new clients
on the same registry), kept in a weak map so :class:`extauthz.metrics.Metrics` is untouched.
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from extauthz.metrics import LATENCY_BUCKETS

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, ExternalMetrics] = (
    weakref.WeakKeyDictionary())


class ExternalMetrics:
    """The metric families above, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("extauthz_external_calls", "PDP calls and metadata lookups by "
                             "kind, name and result.", ["kind", "name", "result"],
                             registry=registry)
        self.duration = Histogram("extauthz_external_call_duration_seconds",
                                  "Time of each outbound PDP call / lookup.", ["kind", "name"],
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.cache_results = Counter("extauthz_external_cache", "PDP / lookup cache results "
                                     "(hit, negative_hit, shared, miss, overloaded).",
                                     ["kind", "name", "result"], registry=registry)
        self.fallbacks = Counter("extauthz_external_fallbacks", "Failed PDP calls / lookups "
                                 "answered by the configured fallback.",
                                 ["kind", "name", "action"], registry=registry)
        self._children: dict[tuple[str, str, str], Any] = {}

    def call(self, kind: str, name: str, result: str, seconds: float) -> None:
        self.calls.labels(kind, name, result).inc()
        self.duration.labels(kind, name).observe(seconds)

    def cache(self, kind: str, name: str, result: str) -> None:
        # the labelled children are kept: labels() takes a lock and validates (hot path: a hit)
        key = (kind, name, result)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.cache_results.labels(kind, name, result)
        child.inc()

    def fallback(self, kind: str, name: str, action: str) -> None:
        self.fallbacks.labels(kind, name, action).inc()


def external_metrics(registry: CollectorRegistry) -> ExternalMetrics:
    """The (one) :class:`ExternalMetrics` of ``registry``."""
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = ExternalMetrics(registry)
    return found
