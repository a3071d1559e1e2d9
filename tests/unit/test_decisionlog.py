"""Decision log: the allow-listed record, query values removed, sampling, never a credential."""

from __future__ import annotations

import io
import json
from types import MappingProxyType

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
