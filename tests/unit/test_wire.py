"""Decision -> CheckResponse: the Envoy 1.40 wire facts (DESIGN.md §4) hold in what we build."""

from __future__ import annotations

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.decision import Decision, GrpcCode, Outcome, deny
from extauthz.errors import Reason
from extauthz.respond.grpc import to_check_response


def test_allow_sets_overwrite_headers_and_removals() -> None:
    d = Decision(
        outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK, reason=Reason.OK,
        route="r", upstream_headers=(("x-auth-subject", "alice"),),
        remove_headers=("x-api-key", "host", ":authority"), remove_query=("api_key",),
        dynamic_metadata={"route": "r", "identity": {"subject": "alice", "scopes": ["a"]}},
    )
    resp = to_check_response(d)
    assert resp.status.code == 0
    assert resp.HasField("ok_response") and not resp.HasField("denied_response")
    (h,) = resp.ok_response.headers
    assert (h.header.key, h.header.value) == ("x-auth-subject", "alice")
    # Envoy 1.40 ignores append_action on ok_response: the deprecated BoolValue must be explicit.
    assert h.HasField("append") and h.append.value is False
    # pseudo-headers and host cannot be removed by Envoy: never sent
    assert list(resp.ok_response.headers_to_remove) == ["x-api-key"]
    assert list(resp.ok_response.query_parameters_to_remove) == ["api_key"]
    assert resp.dynamic_metadata["identity"]["subject"] == "alice"
    # Round trip through bytes (what actually crosses the wire)
    again = external_auth_pb2.CheckResponse.FromString(resp.SerializeToString())
    assert again == resp


def test_deny_has_non_ok_status_and_explicit_http_status() -> None:
    d = deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL, "r", "credentials required",
             challenges=['Bearer realm="x"', 'ApiKey realm="x", header="x-api-key"'])
    resp = to_check_response(d)
    assert resp.status.code == 16
    assert resp.HasField("denied_response")
    assert resp.denied_response.status.code == 401
    headers = [(h.header.key, h.header.value, h.HasField("append") and h.append.value,
                h.HasField("append")) for h in resp.denied_response.headers]
    # The first of a name overwrites (append=false); repeats leave `append` unset so Envoy 1.40
    # applies append_action's default APPEND_IF_EXISTS_OR_ADD (it drops them if append=true).
    assert headers == [
        ("content-type", "application/problem+json", False, True),
        ("www-authenticate", 'Bearer realm="x"', False, True),
        ("www-authenticate", 'ApiKey realm="x", header="x-api-key"', False, False),
    ]
    assert resp.denied_response.headers[2].append_action == 0  # APPEND_IF_EXISTS_OR_ADD
    assert '"reason":"missing_credential"' in resp.denied_response.body


def test_every_deny_status_maps() -> None:
    for status, code in [(400, GrpcCode.INVALID_ARGUMENT), (403, GrpcCode.PERMISSION_DENIED),
                         (503, GrpcCode.UNAVAILABLE)]:
        resp = to_check_response(deny(status, code, Reason.FORBIDDEN, "r", "x"))
        assert resp.status.code == int(code) and resp.status.code != 0
        assert resp.denied_response.status.code == status
