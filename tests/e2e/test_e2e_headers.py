"""What the upstream sees after Envoy + extauthz: identity injected, credentials and spoofs gone.

The echo upstream answers with the request headers it received, so every assertion here is about
the bytes that actually reached the application.
"""

from __future__ import annotations

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import upstream_headers
from tests.support.processes import Stack
from tests.support.transports import GRPC_TRANSPORTS

#: every test here runs over both gRPC servers: grpc.aio and the Envoy front (conftest.py)
STACK_TRANSPORTS = GRPC_TRANSPORTS

SPOOFS = [
    ("x-auth-subject", "root"),
    ("X-Auth-Consumer", "billing-admin"),
    ("x-auth-method", "mtls"),
    ("x-auth-scopes", "admin"),
    ("x-auth-email", "ceo@example.com"),
    ("x-auth-anything-else", "1"),
]


def test_jwt_identity_headers_reach_the_upstream(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", scopes=["orders:read", "profile"], extra={"email": "a@example.com"})
    seen = upstream_headers(
        stack.get("/v1/users/alice/orders", {"authorization": f"Bearer {token}"})
    )
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-method"] == "jwt"
    assert seen["x-auth-scopes"].split() == ["orders:read", "profile"]
    assert seen["x-auth-email"] == "a@example.com"
    assert "x-auth-consumer" not in seen  # a JWT subject is not an API consumer
    assert "authorization" not in seen


def test_api_key_identity_headers_reach_the_upstream(stack: Stack) -> None:
    seen = upstream_headers(stack.get("/reports/q1", {"x-api-key": DEMO_API_KEY}))
    assert seen["x-auth-subject"] == "demo-client"
    assert seen["x-auth-consumer"] == "demo-client"
    assert seen["x-auth-method"] == "api_key"
    assert "x-api-key" not in seen


def test_spoofed_identity_headers_are_replaced_or_removed_jwt(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", scopes=["orders:read"])
    headers = [("authorization", f"Bearer {token}"), *SPOOFS]
    seen = upstream_headers(stack.get("/v1/users/alice/orders", headers))
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-method"] == "jwt"
    assert seen["x-auth-scopes"] == "orders:read"
    for name in ("x-auth-consumer", "x-auth-email", "x-auth-anything-else"):
        assert name not in seen, (name, seen)


def test_spoofed_identity_headers_are_replaced_or_removed_api_key(stack: Stack) -> None:
    seen = upstream_headers(stack.get("/reports/q1", [("x-api-key", DEMO_API_KEY), *SPOOFS]))
    assert seen["x-auth-subject"] == "demo-client"
    assert seen["x-auth-consumer"] == "demo-client"
    assert seen["x-auth-method"] == "api_key"
    assert seen["x-auth-scopes"].split() == ["orders:read", "reports:read"]
    assert "x-auth-email" not in seen
    assert "x-auth-anything-else" not in seen


def test_repeated_spoofed_subject_is_not_appended(stack: Stack) -> None:
    headers = [("x-api-key", DEMO_API_KEY), ("x-auth-subject", "root"), ("x-auth-subject", "x")]
    r = stack.get("/reports/q1", headers)
    assert upstream_headers(r)["x-auth-subject"] == "demo-client"
    received = [v for k, v in r.json()["header_list"] if k == "x-auth-subject"]
    assert received == ["demo-client"]


def test_spoofed_headers_are_removed_on_a_public_route(stack: Stack) -> None:
    seen = upstream_headers(stack.get("/public/hello", SPOOFS))
    assert not [h for h in seen if h.startswith("x-auth-")], seen


def test_spoofed_headers_are_removed_where_ext_authz_is_disabled(stack: Stack) -> None:
    # extauthz never sees /static/ requests; Envoy's header_mutation strips the namespace.
    seen = upstream_headers(stack.get("/static/app.js", [*SPOOFS, ("x-auth-methods", "jwt")]))
    assert not [h for h in seen if h.startswith("x-auth-")], seen
    assert seen["x-request-id"]  # other headers still arrive


def test_unrelated_headers_pass_through_untouched(stack: Stack) -> None:
    headers = {"x-api-key": DEMO_API_KEY, "x-tenant": "acme", "accept": "application/json"}
    seen = upstream_headers(stack.get("/reports/q1", headers))
    assert seen["x-tenant"] == "acme"
    assert seen["accept"] == "application/json"
    assert seen["x-request-id"]


def test_denied_request_never_reaches_the_upstream(stack: Stack) -> None:
    r = stack.get("/reports/q1", {"x-api-key": "eak_wrong"})
    assert r.status == 401
    assert r.problem().get("upstream") is None  # the body is extauthz's problem, not the echo
