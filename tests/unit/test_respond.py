"""One table of decisions, both encodings: the gRPC CheckResponse and the HTTP ext_authz answer.

Each row is a decision (most made by the real pipeline from a request, built as Envoy sends
it; the rest built by the neutral builders the pipeline and the rate limiter use) and what
Envoy must be told, stated **once**: status, gRPC code, reason, the headers set on the upstream
request, the headers and query parameters removed from it, the headers for the client, the
problem body, the dynamic metadata. Both renderers are then read back into that one shape
(the gRPC one: the bytes `GRPC_BYTES` sends, which must parse to the message grpc.aio sends) and
must say exactly what the row says:

* gRPC: ``status.code``, ``ok_response.headers`` (each with ``append: false``),
  ``headers_to_remove``, ``query_parameters_to_remove``, ``response_headers_to_add`` (``append``
  unset: Envoy's default APPEND_IF_EXISTS_OR_ADD), ``denied_response`` status/headers/body,
  ``dynamic_metadata``;
* HTTP: the status line, the headers in order (upstream ones, then
  ``x-envoy-auth-headers-to-remove``, then the client's), ``x-extauthz-md-*`` metadata headers,
  ``content-length`` and the body (none for a HEAD check).

Where the HTTP protocol cannot carry a decision (a query parameter to remove; a rewritten
``cookie`` when Envoy is not known to forward it) the row says so, and the HTTP answer must be
the refusal (503 ``internal_error``), never a partial allow.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.checktool import build_check_request
from extauthz.decision import Decision, GrpcCode, Outcome, deny, from_error
from extauthz.edge import GRPC_BYTES, decide
from extauthz.errors import DependencyUnavailable, Reason, TooManyAttempts
from extauthz.keys import hash_api_key
from extauthz.pipeline import Engine
from extauthz.respond.grpc import to_check_response
from extauthz.respond.http import METADATA_PREFIX, REASONS, REMOVE_HEADER, render
from tests.support.configs import started_engine

KEY = "eak_respond-table-key-00000000000000"
WRONG = "eak_respond-table-key-11111111111111"

CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
  cookie-keys: {{api_key: {{sources: [{{cookie: api_key}}]}}}}
  query-keys: {{api_key: {{sources: [{{query: api_key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [read]}}]
routes:
- {{name: api, match: {{prefix: /api/}}, authn: [keys]}}
- {{name: multi, match: {{prefix: /multi/}}, authn: [keys, cookie-keys]}}
- {{name: cookie, match: {{prefix: /cookie/}}, authn: [cookie-keys]}}
- {{name: query, match: {{prefix: /q/}}, authn: [query-keys]}}
- {{name: admin, match: {{prefix: /admin/}}, authn: [keys], authz: {{scopes_all: [admin]}}}}
- name: shadow
  match: {{prefix: /shadow/}}
  authn: [keys]
  authz: {{shadow: true, rules: [{{scopes_all: [write]}}]}}
- {{name: open, match: {{prefix: /open/}}, public: true}}
"""

PROBLEM = ("content-type", "application/problem+json")
ALICE = (("x-auth-subject", "alice"), ("x-auth-method", "api_key"),
         ("x-auth-consumer", "alice"), ("x-auth-scopes", "read"))
ALICE_META = {"subject": "alice", "method": "api_key", "methods": ["api_key"],
              "authenticator": "keys", "consumer": "alice", "scopes": ["read"]}
RATE_FIELDS = (("ratelimit-policy", '"per-consumer";q=100;w=60'),
               ("ratelimit", '"per-consumer";r=99;t=60'))

Decide = Callable[[Engine], Awaitable[Decision]]


def request(path: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> Decide:
    """A decision the pipeline makes for this request (a CheckRequest as Envoy sends it)."""
    data = {"method": method, "path": path, "headers": dict(headers or {})}

    async def run(engine: Engine) -> Decision:
        return await decide(engine, build_check_request(data))

    return run


def built(decision: Decision) -> Decide:
    """A decision built by the neutral builders (``deny``, ``from_error``, the rate limiter's)."""

    async def run(engine: Engine) -> Decision:
        return decision

    return run


@dataclass(frozen=True)
class Said:
    """What one encoding tells Envoy, in one shape for both."""

    status: int
    reason: str = ""
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    remove_query: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    id: str
    decision: Decide
    #: what both encodings must say
    expect: Said
    grpc_code: GrpcCode = GrpcCode.OK
    #: the check request was a HEAD (HTTP: no body; gRPC: the same CheckResponse)
    head: bool = False
    #: Envoy forwards a rewritten cookie (``--http-authz-cookie-forwarded``)
    cookie_forwarded: bool = False
    #: why the HTTP transport must refuse this decision (503) instead of carrying it
    http_refuses: str = ""


ROWS = [
    Row("allow: identity set, credential and spoofed identity removed",
        request("/api/v1", {"x-api-key": KEY, "x-auth-subject": "mallory",
                            "x_auth_consumer": "mallory"}),
        # x-auth-subject is not removed: it is set (Envoy overwrites the client's)
        Said(200, "ok", set=ALICE, remove=("x_auth_consumer", "x-api-key"),
             metadata={"route": "api", "identity": ALICE_META})),
    Row("allow: a credential cookie cut out of the cookie header",
        request("/cookie/v1", {"cookie": f"theme=dark; api_key={KEY}; lang=en"}),
        Said(200, "ok", set=(*ALICE[:2], ("x-auth-consumer", "alice"),
                             ("x-auth-scopes", "read"), ("cookie", "theme=dark; lang=en")),
             metadata={"route": "cookie",
                       "identity": {**ALICE_META, "authenticator": "cookie-keys"}}),
        cookie_forwarded=True),
    Row("allow: a cookie rewrite Envoy is not known to forward",
        request("/cookie/v1", {"cookie": f"theme=dark; api_key={KEY}"}),
        Said(200, "ok", set=(*ALICE, ("cookie", "theme=dark")),
             metadata={"route": "cookie",
                       "identity": {**ALICE_META, "authenticator": "cookie-keys"}}),
        http_refuses="Envoy keeps the client's cookie unless allowed_upstream_headers has it"),
    Row("allow: the cookie header removed when only the credential was in it",
        request("/cookie/v1", {"cookie": f"api_key={KEY}"}),
        Said(200, "ok", set=ALICE, remove=("cookie",),
             metadata={"route": "cookie",
                       "identity": {**ALICE_META, "authenticator": "cookie-keys"}})),
    Row("allow: a query credential stripped",
        request(f"/q/v1?page=2&api_key={KEY}"),
        Said(200, "ok", set=ALICE, remove_query=("api_key",),
             metadata={"route": "query",
                       "identity": {**ALICE_META, "authenticator": "query-keys"}}),
        http_refuses="the HTTP protocol has no query_parameters_to_remove"),
    Row("allow: rate limit fields appended to the client's response",
        built(Decision(outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK,
                       reason=Reason.OK, route="api", upstream_headers=ALICE[:1],
                       response_headers=RATE_FIELDS)),
        Said(200, "ok", set=ALICE[:1], client=RATE_FIELDS)),
    Row("allow: pseudo-headers and host are never asked to be removed",
        built(Decision(outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK,
                       reason=Reason.OK, route="api",
                       remove_headers=("x-api-key", "host", ":authority"))),
        Said(200, "ok", remove=("x-api-key",))),
    Row("allow: shadow mode waives a policy denial and says so in the metadata",
        request("/shadow/v1", {"x-api-key": KEY}),
        Said(200, "insufficient_scope", set=ALICE, remove=("x-api-key",),
             metadata={"route": "shadow", "identity": ALICE_META,
                       "shadow_deny": {"reason": "insufficient_scope", "rule": "rules[0]"}})),
    Row("allow: a public route", request("/open/v1"),
        Said(200, "public", metadata={"route": "open"})),
    Row("allow: HEAD", request("/api/v1", {"x-api-key": KEY}, method="HEAD"),
        Said(200, "ok", set=ALICE, remove=("x-api-key",),
             metadata={"route": "api", "identity": ALICE_META}), head=True),
    Row("401: no credential, one challenge per method",
        request("/multi/v1"),
        Said(401, "missing_credential",
             client=(PROBLEM, ("www-authenticate", 'ApiKey realm="extauthz", header="x-api-key"'),
                     ("www-authenticate", 'ApiKey realm="extauthz", cookie="api_key"'))),
        GrpcCode.UNAUTHENTICATED),
    Row("401: an invalid credential, its method's challenge carries the error",
        request("/api/v1", {"x-api-key": WRONG}),
        Said(401, "invalid_api_key",
             client=(PROBLEM, ("www-authenticate",
                               'ApiKey realm="extauthz", header="x-api-key", '
                               'error="invalid_token", error_description="invalid API key"'))),
        GrpcCode.UNAUTHENTICATED),
    Row("401: HEAD has headers and no body", request("/api/v1", method="HEAD"),
        Said(401, "missing_credential",
             client=(PROBLEM,
                     ("www-authenticate", 'ApiKey realm="extauthz", header="x-api-key"'))),
        GrpcCode.UNAUTHENTICATED, head=True),
    Row("403: the policy denies", request("/admin/v1", {"x-api-key": KEY}),
        Said(403, "insufficient_scope", client=(PROBLEM,)), GrpcCode.PERMISSION_DENIED),
    Row("400: a path that is not normalized", request("/api/a/../v1", {"x-api-key": KEY}),
        Said(400, "bad_request", client=(PROBLEM,)), GrpcCode.INVALID_ARGUMENT),
    Row("429: a rate limit with its RateLimit fields",
        built(replace(deny(429, GrpcCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED, "api",
                           "rate limit exceeded: per-consumer"),
                      response_headers=(PROBLEM, ("retry-after", "17"), *RATE_FIELDS))),
        Said(429, "rate_limited", client=(PROBLEM, ("retry-after", "17"), *RATE_FIELDS)),
        GrpcCode.RESOURCE_EXHAUSTED),
    Row("429: too many failed attempts",
        built(from_error(TooManyAttempts(Reason.TOO_MANY_ATTEMPTS, retry_after=30), "api")),
        Said(429, "too_many_attempts", client=(PROBLEM, ("retry-after", "30"))),
        GrpcCode.RESOURCE_EXHAUSTED),
    Row("503: a dependency is down",
        built(from_error(DependencyUnavailable(Reason.JWKS_UNAVAILABLE), "api")),
        Said(503, "jwks_unavailable", client=(PROBLEM,)), GrpcCode.UNAVAILABLE),
]


# -- reading each encoding back into one shape ------------------------------------------------

def grpc_said(decision: Decision) -> tuple[Said, int, str]:
    """The CheckResponse (the bytes the bytes transports send, written by ``grpc_wire``, which
    must parse to the message the grpc.aio servicer sends): what it says, its code and its
    body."""
    sent = GRPC_BYTES.render(decision, b"")
    response = external_auth_pb2.CheckResponse.FromString(sent)
    message = to_check_response(decision)
    assert response == message
    assert response.WhichOneof("http_response") == message.WhichOneof("http_response")
    assert len(sent) <= len(message.SerializeToString())
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    if response.HasField("ok_response"):
        ok = response.ok_response
        # Envoy 1.40 ignores append_action on ok_response.headers: an explicit append=false
        assert all(h.HasField("append") and not h.append.value for h in ok.headers)
        # appended to the client's response: append unset (APPEND_IF_EXISTS_OR_ADD)
        assert all(not h.HasField("append") for h in ok.response_headers_to_add)
        said = Said(200, decision.reason.value,
                    set=tuple((h.header.key, h.header.value) for h in ok.headers),
                    remove=tuple(ok.headers_to_remove),
                    remove_query=tuple(ok.query_parameters_to_remove),
                    client=tuple((h.header.key, h.header.value)
                                 for h in ok.response_headers_to_add),
                    metadata=metadata)
        return said, response.status.code, ""
    denied = response.denied_response
    seen: set[str] = set()
    for h in denied.headers:  # the first of a name overwrites, repeats are appended
        assert h.HasField("append") is (h.header.key not in seen)
        seen.add(h.header.key)
    said = Said(denied.status.code, response.status.message,
                client=tuple((h.header.key, h.header.value) for h in denied.headers),
                metadata=metadata)
    return said, response.status.code, denied.body


def http_said(decision: Decision, *, head: bool, cookie_forwarded: bool) -> tuple[Said, str]:
    """The HTTP answer: what it says and its problem body (checked against content-length)."""
    raw = render(decision, True, head, cookie_forwarded, metadata=True)
    block, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = block.decode("utf-8").split("\r\n")
    _, code, phrase = status_line.split(" ", 2)
    status = int(code)
    assert phrase == REASONS[status]
    headers = [tuple(line.split(": ", 1)) for line in lines]
    assert headers[-1][0] == "content-length"  # always last, and the only framing header
    length = int(headers.pop()[1])
    if head:
        assert body == b""  # a HEAD answer has no body, or Envoy counts a protocol error
        body = decision.body.encode() if status != 200 else b""
    assert len(body) == length
    if status != 200:
        problem = json.loads(body)
        said = Said(status, problem["reason"], client=tuple((k, v) for k, v in headers))
        return said, body.decode()
    remove: tuple[str, ...] = ()
    metadata = {}
    rest = []
    for name, value in headers:
        if name == REMOVE_HEADER:
            remove = tuple(value.split(","))
        elif name.startswith(METADATA_PREFIX):
            # a plain printable ASCII string is sent as is, anything else as JSON
            member = name[len(METADATA_PREFIX):].replace("-", "_")
            metadata[member] = json.loads(value) if value[:1] in '{["' else value
        else:
            rest.append((name, value))
    # HTTP does not say which headers are the upstream's and which the client's: Envoy's
    # allowed_upstream_headers / allowed_client_headers_on_success sort them; the order is
    # upstream first
    return Said(200, decision.reason.value, set=tuple(rest), remove=remove,
                metadata=metadata), ""


# -- the test -----------------------------------------------------------------------------------

@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with started_engine(tmp_path, CONFIG) as started:
        yield started


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_both_encodings_say_what_the_table_says(row: Row, engine: Engine) -> None:
    decision = await row.decision(engine)
    expect = row.expect
    assert decision.http_status == expect.status
    assert decision.grpc_code is row.grpc_code

    grpc, code, grpc_body = grpc_said(decision)
    assert code == int(row.grpc_code)
    assert grpc == expect

    http, http_body = http_said(decision, head=row.head, cookie_forwarded=row.cookie_forwarded)
    if row.http_refuses:
        assert http == Said(503, "internal_error", client=(PROBLEM,)), row.http_refuses
        return
    if expect.status == 200:  # one header list on HTTP: the upstream's, then the client's
        assert http == replace(expect, set=expect.set + expect.client, client=())
    else:
        assert http == expect
    # the same problem body on both (a deny), none on an allow
    assert http_body == grpc_body == decision.body


def test_every_kind_of_answer_is_in_the_table() -> None:
    """The table covers what the brief asks of it (a guard against rows being dropped)."""
    statuses = {r.expect.status for r in ROWS}
    assert statuses == {200, 400, 401, 403, 429, 503}
    assert any(r.head and r.expect.status == 200 for r in ROWS)
    assert any(r.head and r.expect.status != 200 for r in ROWS)
    assert any(r.expect.remove_query for r in ROWS)
    assert any(("cookie", v) in r.expect.set for r in ROWS for v in ["theme=dark; lang=en"])
    assert any(len([k for k, _ in r.expect.client if k == "www-authenticate"]) > 1 for r in ROWS)
    assert any("shadow_deny" in r.expect.metadata for r in ROWS)
