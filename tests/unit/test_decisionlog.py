"""Decision log: the allow-listed record, query values removed, sampling, never a credential."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter

from extauthz.decision import Decision, GrpcCode, Outcome, deny
from extauthz.decisionlog import DecisionLog, record, redacted_path
from extauthz.errors import Reason
from extauthz.types import AuthMethod, Headers, Identity, RequestView

SECRET = "eak_super-secret-value-1234567890"


def view() -> RequestView:
    return RequestView(
        method="GET", host="h", path="/v1/orders", raw_query=f"api_key={SECRET}&page=2",
        query=MappingProxyType({"api_key": SECRET, "page": "2"}),
        headers=Headers({"x-api-key": SECRET, "authorization": f"Bearer {SECRET}",
                         "cookie": f"k={SECRET}"}),
        source_address="10.0.0.1", request_id="rid-9", body=SECRET.encode(),
    )


def allow() -> Decision:
    return Decision(
        outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK, reason=Reason.OK,
        route="orders", upstream_headers=(("x-auth-subject", "alice"),),
        identity=Identity(method=AuthMethod.API_KEY, subject="alice", authenticator="k",
                          consumer="alice", key_id="k1"),
    )


def test_record_fields_and_redaction() -> None:
    rec = record(view(), allow(), 0.00042)
    assert rec["route"] == "orders" and rec["outcome"] == "allow" and rec["reason"] == "ok"
    assert rec["path"] == "/v1/orders?api_key=&page="
    assert rec["source"] == "10.0.0.1" and rec["request_id"] == "rid-9"
    assert rec["identity"] == {"method": "api_key", "subject": "alice", "consumer": "alice"}
    assert rec["latency_ms"] == 0.42
    assert SECRET not in json.dumps(rec)


def test_redacted_path_without_query() -> None:
    v = RequestView(method="GET", host="h", path="/x")
    assert redacted_path(v) == "/x"


def test_stream_gets_json_lines_and_denies_always() -> None:
    out = io.StringIO()
    log = DecisionLog(out, sample_allowed=0.0)
    log.write(view(), allow(), 0.001)  # sampled away
    log.write(view(), deny(401, GrpcCode.UNAUTHENTICATED, Reason.INVALID_API_KEY, "orders",
                           "invalid API key"), 0.001)
    log.write(None, deny(503, GrpcCode.UNAVAILABLE, Reason.INTERNAL_ERROR, "_no_route_", "x"), 0)
    log.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["reason"] for line in lines] == ["invalid_api_key", "internal_error"]
    assert lines[0]["status"] == 401
    assert SECRET not in out.getvalue()


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_lines_are_written_in_batches_without_waiting_for_close() -> None:
    out = io.StringIO()
    log = DecisionLog(out, flush_interval=0.02)
    try:
        for _ in range(3):
            log.write(view(), allow(), 0.001)
        assert _wait_for(lambda: out.getvalue().count("\n") == 3)
    finally:
        log.close()
    assert out.getvalue().count("\n") == 3  # close wrote nothing twice


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    registry = CollectorRegistry()
    dropped = Counter("dropped", "d", registry=registry)
    out = io.StringIO()
    log = DecisionLog(out, max_queue=2, dropped=dropped, flush_interval=60)
    for _ in range(5):
        log.write(view(), allow(), 0.001)
    log.close()
    assert out.getvalue().count("\n") == 2
    assert registry.get_sample_value("dropped_total") == 3


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_a_failing_sink_counts_every_line_it_lost() -> None:
    registry = CollectorRegistry()
    dropped = Counter("dropped", "d", registry=registry)
    log = DecisionLog(_BrokenStream(), dropped=dropped, flush_interval=60)
    for _ in range(4):
        log.write(view(), allow(), 0.001)
    log.close()
    assert registry.get_sample_value("dropped_total") == 4


def test_writes_after_close_are_counted_as_dropped() -> None:
    registry = CollectorRegistry()
    dropped = Counter("dropped", "d", registry=registry)
    out = io.StringIO()
    log = DecisionLog(out, dropped=dropped)
    log.close()
    log.write(view(), allow(), 0.001)
    assert out.getvalue() == "" and registry.get_sample_value("dropped_total") == 1
