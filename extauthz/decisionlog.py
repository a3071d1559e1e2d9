"""Structured decision log: one JSON line per decision.

What is written: time, request id, route, HTTP method, path with query *values* removed (keys
kept: ``/v1/orders?limit=&page=``), source address, identity (method, subject, consumer),
outcome (``allow``, ``deny``, ``shadow_deny``), reason code (for ``shadow_deny``: the reason the
policy would have denied with), the policy rule that denied (its configuration path), HTTP
status, latency. What is never written: header values, query values, bodies, tokens, keys,
signatures, cookies — the record is built from an allow-list of fields, so a new credential type
cannot leak by accident.

Writing happens on a background thread fed by a bounded queue, so a slow stdout never blocks a
check. Allowed decisions can be sampled (``sample_allowed``); denies and shadow denies are always
enqueued. If the queue is full (the sink cannot keep up), the line is dropped and counted in
``extauthz_decision_log_dropped_total`` rather than stalling the request path.
"""

from __future__ import annotations

import json
import queue
import random
import sys
import threading
import time
from typing import IO, Any
from urllib.parse import parse_qsl

from prometheus_client import Counter

from extauthz.decision import Decision, Outcome
from extauthz.types import RequestView

_STOP = object()


def redacted_path(view: RequestView) -> str:
    """The request path with every query value removed (keys kept, in order)."""
    if not view.raw_query:
        return view.path
    try:
        keys = [k for k, _ in parse_qsl(view.raw_query, keep_blank_values=True,
                                        max_num_fields=256)]
    except ValueError:
        return view.path + "?…"
    return view.path + "?" + "&".join(f"{_safe(k)}=" for k in keys)


def _safe(key: str) -> str:
    # A query *key* is not a credential, but keep the line bounded and printable.
    return "".join(ch for ch in key[:64] if ch.isprintable() and ch not in "&=")


def record(view: RequestView | None, decision: Decision, latency_s: float) -> dict[str, Any]:
    """The log record of one decision (allow-listed fields only)."""
    rec: dict[str, Any] = {
        "time": round(time.time(), 6),
        "request_id": view.request_id[:128] if view is not None else "",
        "route": decision.route,
        "method": view.method[:16] if view is not None else "",
        "path": redacted_path(view)[:2048] if view is not None else "",
        "source": view.source_address if view is not None else "",
        "outcome": decision.outcome.value,
        "reason": decision.reason.value,
        "status": decision.http_status,
        "latency_ms": round(latency_s * 1000, 3),
    }
    if decision.rule:
        rec["rule"] = decision.rule
    identity = decision.identity
    if identity is not None:
        rec["identity"] = {
            "method": identity.method.value,
            "subject": identity.subject[:256],
            "consumer": identity.consumer,
        }
    return rec


class DecisionLog:
    """Writes decision records as JSON lines to a stream from a background thread."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        sample_allowed: float = 1.0,
        max_queue: int = 10_000,
        dropped: Counter | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._sample_allowed = sample_allowed
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._dropped = dropped
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, view: RequestView | None, decision: Decision, latency_s: float) -> None:
        """Enqueue one decision (never blocks)."""
        sampled_out = (
            decision.outcome is Outcome.ALLOW  # denies and shadow denies are always logged
            and self._sample_allowed < 1.0
            and random.random() >= self._sample_allowed  # noqa: S311 (sampling, not security)
        )
        if sampled_out:
            return
        try:
            self._queue.put_nowait(record(view, decision, latency_s))
        except queue.Full:
            if self._dropped is not None:
                self._dropped.inc()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._stream.write(json.dumps(item, separators=(",", ":")) + "\n")
                if self._queue.empty():
                    self._stream.flush()
            except (OSError, ValueError):
                if self._dropped is not None:
                    self._dropped.inc()

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the writer thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
