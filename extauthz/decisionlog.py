"""Structured decision log: one JSON line per decision.

What is written: time, request id, route, HTTP method, the path *without* its query string and
without ``;`` path parameters (``/v1/orders``, ``/cart;`` for ``/cart;jsessionid=...``), source
address, identity (method, subject, consumer), outcome (``allow``, ``deny``, ``shadow_deny``),
reason code (for ``shadow_deny``: the reason the policy would have denied with), the policy rule
that denied (its configuration path), HTTP status, latency. No part of the query string is
written -- neither values nor names: a client may send its key as ``?<key>`` or ``?<key>=x``, and
a name is then the credential -- except the parameters an operator names
(``extauthz serve --log-query-param page``: exact names, their values kept, 64 characters at
most). What is never written: header values, bodies, tokens, keys, signatures, cookies -- the
record is built from an allow-list of fields, so a new credential type cannot leak by accident.

Writing happens on a background thread in batches: the request path only appends the decision
to a bounded in-memory buffer (no lock, no thread wake-up, no system call), and the writer
formats and writes whatever has gathered every ``flush_interval`` seconds (50 ms by default) in
one write. Per-line hand-offs through a ``queue.Queue`` cost a thread wake-up, a GIL hand-over and
a ``write``/``flush`` per decision — on a 2-core sidecar that was a measurable share of the CPU
per check (docs/performance.md). Allowed decisions can be sampled (``sample_allowed``); denies and
shadow denies are always kept. If the buffer is full (the sink cannot keep up), the decision is
dropped and counted in ``extauthz_decision_log_dropped_total`` rather than stalling the request
path.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import parse_qsl, quote, urlencode

from prometheus_client import Counter

from extauthz.decision import Decision, Outcome
from extauthz.logsetup import write_all
from extauthz.types import RequestView

#: records formatted per hold of the GIL by the writer (~7 us each: well under a millisecond)
_CHUNK = 32


#: ``;`` path parameters (also encoded as %3B), up to the next segment: ``;jsessionid=...``
_PATH_PARAMETERS = re.compile(r"(?:;|%3[bB])[^/]*")
#: longest logged value of an allow-listed query parameter
_MAX_VALUE = 64
#: ``json.dumps(record, separators=(",", ":"))`` without building an encoder per line (the
#: same bytes; json.dumps makes a new JSONEncoder whenever it is given any argument)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def redacted_path(view: RequestView, query_params: frozenset[str] = frozenset()) -> str:
    """The request path as logged: path parameters cut (``/cart;jsessionid=X`` -> ``/cart;``), no
    query string but the parameters named in ``query_params`` (exact, decoded names; values
    truncated). Nothing else of the query, not even a name: ``?<key>`` is a credential too."""
    path = view.path
    if ";" in path or "%3" in path:
        path = _PATH_PARAMETERS.sub(";", path)
    if not view.raw_query or not query_params:
        return path
    try:
        pairs = parse_qsl(view.raw_query, keep_blank_values=True, max_num_fields=256)
    except ValueError:
        return path
    kept = [(k, v[:_MAX_VALUE]) for k, v in pairs if k in query_params]
    return path + "?" + urlencode(kept, quote_via=quote) if kept else path


def record(view: RequestView | None, decision: Decision, latency_s: float,
           at: float | None = None, query_params: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The log record of one decision (allow-listed fields only), decided at ``at`` (now);
    ``query_params``: the query parameters whose values may be logged (default: none)."""
    rec: dict[str, Any] = {
        "time": round(time.time() if at is None else at, 6),
        "request_id": view.request_id[:128] if view is not None else "",
        "route": decision.route,
        "method": view.method[:16] if view is not None else "",
        "path": redacted_path(view, query_params)[:2048] if view is not None else "",
        "source": view.source_address if view is not None else "",
        "outcome": decision.outcome.value,
        "reason": decision.reason.value,
        "status": decision.http_status,
        "latency_ms": round(latency_s * 1000, 3),
    }
    if decision.rule:
        rec["rule"] = decision.rule
    if decision.rate_limit:
        rec["rate_limit"] = dict(decision.rate_limit)
    if decision.pdp:  # PDP answers: names, booleans and the PDP's bounded context
        rec["pdp"] = [dict(answer) for answer in decision.pdp]
    identity = decision.identity
    if identity is not None:
        rec["identity"] = {
            "method": identity.method.value,
            "subject": identity.subject[:256],
            "consumer": identity.consumer,
        }
    return rec


def _fileno(stream: IO[str]) -> int | None:
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # a test's capture object: use the stream
        return None


class DecisionLog:
    """Writes decision records as JSON lines to a stream, in batches, from a background thread."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        sample_allowed: float = 1.0,
        max_queue: int = 10_000,
        dropped: Counter | None = None,
        flush_interval: float = 0.05,
        query_params: Iterable[str] = (),
    ) -> None:
        self._stream = stream
        #: no stream given: stdout's descriptor, written with os.write (see _write)
        self._fd = _fileno(sys.stdout) if stream is None else None
        self._sample_allowed = sample_allowed
        self._max_queue = max_queue
        self._flush_interval = flush_interval
        #: query parameters whose values may be logged (an operator's explicit choice)
        self._query_params = frozenset(query_params)
        #: (view, decision, latency, time) per decision; appended by the request path, drained
        #: by the writer (deque append/popleft are atomic: no lock needed between the two)
        self._pending: deque[tuple[RequestView | None, Decision, float, float]] = deque()
        self._dropped = dropped
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, view: RequestView | None, decision: Decision, latency_s: float) -> None:
        """Keep one decision for the next batch (never blocks)."""
        sampled_out = (
            decision.outcome is Outcome.ALLOW  # denies and shadow denies are always logged
            and self._sample_allowed < 1.0
            and random.random() >= self._sample_allowed  # noqa: S311 (sampling, not security)
        )
        if sampled_out:
            return
        if len(self._pending) >= self._max_queue or self._stopping.is_set():
            if self._dropped is not None:
                self._dropped.inc()
            return
        self._pending.append((view, decision, latency_s, time.time()))

    def _run(self) -> None:
        while not self._stopping.wait(self._flush_interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Format and write everything pending, in one write."""
        pending = self._pending
        batch = []
        try:
            while True:
                batch.append(pending.popleft())
        except IndexError:
            pass
        if not batch:
            return
        lines: list[str] = []
        for start in range(0, len(batch), _CHUNK):
            if start:
                # Formatting holds the GIL; a whole batch at once (hundreds of records) would
                # stall the event loop for milliseconds (seen as p99). Hand it back between
                # chunks: sleep(0) releases the GIL so a waiting request runs first.
                time.sleep(0)
            lines.extend(_ENCODE(record(*item, query_params=self._query_params)) + "\n"
                         for item in batch[start:start + _CHUNK])
        try:
            self._write("".join(lines))
        except (OSError, ValueError):
            if self._dropped is not None:
                self._dropped.inc(len(batch))

    def _write(self, text: str) -> None:
        """One batch to the sink. stdout goes through ``os.write``: a writer blocked by a pipe
        nobody reads then holds no lock of ``sys.stdout``, whose final flush at exit would
        otherwise wait for it for ever (the process could not stop)."""
        if self._fd is None:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(text)
            stream.flush()
            return
        write_all(self._fd, text.encode("utf-8", "replace"))

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending and stop the writer thread."""
        self._stopping.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._drain()  # a decision appended while the writer made its last batch
