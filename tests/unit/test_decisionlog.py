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
    assert rec["path"] == "/v1/orders"
    assert rec["source"] == "10.0.0.1" and rec["request_id"] == "rid-9"
    assert rec["identity"] == {"method": "api_key", "subject": "alice", "consumer": "alice"}
    assert rec["latency_ms"] == 0.42
    assert SECRET not in json.dumps(rec)


def test_redacted_path_without_query() -> None:
    v = RequestView(method="GET", host="h", path="/x")
    assert redacted_path(v) == "/x"


def _with(path: str, raw_query: str) -> RequestView:
    return RequestView(method="GET", host="h", path=path, raw_query=raw_query)


def test_no_part_of_the_query_string_is_logged_by_default() -> None:
    # A key sent as a value, as a bare name, as a name with a value, encoded, repeated.
    for raw_query in (f"api_key={SECRET}", SECRET, f"{SECRET}=x", f"page=2&{SECRET}",
                      f"api%5Fkey={SECRET}", f"a=1&{SECRET[:20]}%2D{SECRET[20:]}=",
                      f"{SECRET}&{SECRET}"):
        assert redacted_path(_with("/v1/orders", raw_query)) == "/v1/orders", raw_query
        rec = record(_with("/v1/orders", raw_query), allow(), 0.001)
        assert SECRET not in json.dumps(rec) and SECRET[:20] not in json.dumps(rec)


def test_only_allow_listed_query_parameters_are_logged() -> None:
    allowed = frozenset({"page", "limit"})
    v = _with("/v1/orders", f"page=2&{SECRET}=x&limit=10&api_key={SECRET}&{SECRET}")
    assert redacted_path(v, allowed) == "/v1/orders?page=2&limit=10"
    assert redacted_path(_with("/v1/orders", f"{SECRET}=1"), allowed) == "/v1/orders"
    # values are bounded and re-encoded (no raw '&', '=' or newline from the client)
    long = redacted_path(_with("/x", "page=" + "a%26b%0A" * 50), allowed)
    assert long.startswith("/x?page=a%26b%0Aa%26b") and len(long) < 3 * 64 + 10
    assert "\n" not in long


def test_path_parameters_are_cut_from_the_logged_path() -> None:
    assert redacted_path(_with(f"/cart;jsessionid={SECRET}/items", "")) == "/cart;/items"
    assert redacted_path(_with(f"/cart%3Bjsessionid={SECRET}", "")) == "/cart;"
    assert redacted_path(_with("/a/b", "")) == "/a/b"


def test_the_writer_applies_the_allow_list() -> None:
    out = io.StringIO()
    log = DecisionLog(out, query_params=("page",))
    log.write(_with("/v1/orders", f"page=3&{SECRET}"), allow(), 0.001)
    log.close()
    assert json.loads(out.getvalue())["path"] == "/v1/orders?page=3"
    assert SECRET not in out.getvalue()


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
