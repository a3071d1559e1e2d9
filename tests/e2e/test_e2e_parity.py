"""One scenario table, both transports, through real Envoy: what the upstream and the client see.

Two stacks run side by side from the same extauthz configuration and the same echo upstream:

* **grpc**: deploy/envoy/envoy.yaml (ext_authz ``grpc_service``, routes named with
  ``context_extensions``);
* **http**: deploy/envoy/envoy-http-authz.yaml (ext_authz ``http_service``, routes named with an
  Envoy-set ``%ROUTE_NAME%`` header read with ``--http-authz-route-header``).

Each scenario is sent over HTTP/1.1 and HTTP/2 (h2c) to both, and the **normalized outcome** must
be byte-identical: status, the client-visible headers of a denial (content-type,
www-authenticate, retry-after, content-length) and its problem body, and for an allowed request
everything the echo upstream received (method, raw request target, every header name and value in
order, body length). Normalization replaces only what differs by construction: the listener port
in ``host``, the random ``x-request-id`` and the problem body's ``request_id`` (asserted present),
and the seconds of a ``retry-after`` (asserted a number of seconds in the window). Each scenario
also states what must be true (status, identity, credentials and spoofed headers absent).

Where the transports genuinely cannot match, the scenario says so and the test proves the HTTP
transport *refuses* the request instead of silently doing something else:

* a credential in the query string cannot be removed over HTTP (no ``query_parameters_to_remove``
  in that protocol): gRPC strips it, HTTP answers 503 (Envoy's ``status_on_error``);
* a 5xx from the HTTP authorization service is an error to Envoy: the client gets 503 without
  extauthz's problem body (gRPC passes the body through). Both refuse with 503.

Header names with ``_`` pass Envoy by default (``headers_with_underscores_action: ALLOW``); a
shipped config that rejects them answers 400 for those scenarios, on both transports alike. The
scenario accepts either, and when the request gets through, no spelling of a reserved name does.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.demo.idp import DemoIdP
from extauthz.demo.procs import LOOPBACK
from extauthz.http_authz import ROUTE_HEADER
from extauthz.hygiene import canonical_header
from tests.support.curl import HTTP_VERSIONS, STREAM_RESET, curl_request
from tests.support.processes import (
    Stack,
    render_policies,
    start_stack,
    write_config,
)
from tests.support.transports import start_transport_stack

REPO = Path(__file__).resolve().parents[2]
ENVOY_GRPC = REPO / "deploy" / "envoy" / "envoy.yaml"
ENVOY_HTTP = REPO / "deploy" / "envoy" / "envoy-http-authz.yaml"
KEY = DEMO_API_KEY
MAX_HEADERS = 40
#: the headers a denial shows the client that must match across transports
CLIENT_HEADERS = ("content-type", "www-authenticate", "retry-after", "content-length")
#: headers_with_underscores_action: REJECT_REQUEST (HTTP/1.1: 400; HTTP/2: the stream is reset)
UNDERSCORE_REJECTED = (400, STREAM_RESET)
#: grpc-envoy: the gRPC API through the Envoy front (serve --grpc-server envoy); the proxy's
#: Envoy configuration is the grpc one, and every outcome must equal grpc's
#: grpc-native: the built-in HTTP/2 gRPC server (serve --grpc-server native); same rule
TRANSPORTS = ("grpc", "http", "grpc-envoy", "grpc-native")
#: the authenticator whose claims_to_headers name (outside x-auth-) no route uses
TENANT_HEADER = "x-tenant-id"
BASIC_MAX_FAILURES = 3
WRONG_BASIC = ("authorization", "Basic " + base64.b64encode(b"lock:wrong").decode())
#: an introspection endpoint on a port nobody listens on
DEAD_ENDPOINT = f"http://{LOOPBACK}:1/introspect"


# -- the two stacks ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    main = render_policies(e2e_dir / "policies", issuer=idp.issuer)
    data = yaml.safe_load(main.read_text())
    data["settings"]["limits"] = {"max_headers": MAX_HEADERS}
    write_config(main, data)
    # Basic: one user; 3 failures (per user and per address) and the next attempt is 429
    digest = base64.b64encode(hashlib.sha1(b"right-password").digest()).decode()
    (main.parent / "users.htpasswd").write_text(f"lock:{{SHA}}{digest}\n")
    secret = e2e_dir / "introspection-secret"
    secret.write_text("parity-secret\n")
    write_config(main.parent / "routes.d" / "parity.yaml", {
        "authenticators": {
            "cookie-keys": {"api_key": {"sources": [{"cookie": "api_key"}]}},
            "basic-users": {"basic": {"htpasswd_file": "users.htpasswd",
                                      "max_failures": BASIC_MAX_FAILURES}},
            "query-keys": {"api_key": {"sources": [{"query": "api_key"}]}},
            # on no route: its identity header is reserved on every route all the same
            "tenant-idp": {"jwt": {"issuer": idp.issuer, "audiences": ["extauthz-demo"],
                                   "algorithms": ["RS256", "ES256"],
                                   "jwks": {"discovery": True},
                                   "claims_to_headers": {"tenant": TENANT_HEADER}}},
            # keys from a port nobody listens on (1): 503 jwks_unavailable
            # an introspection endpoint nobody listens on (port 1): 503
            "dead-introspection": {"introspection": {
                "endpoint": DEAD_ENDPOINT, "client_id": "parity", "timeout_seconds": 0.3,
                "client_secret_file": str(secret)}},
        },
        "routes": [
            {"name": "cookie-route", "match": {"prefix": "/cookie/"}, "authn": ["cookie-keys"]},
            {"name": "query-route", "match": {"prefix": "/query/"}, "authn": ["query-keys"]},
            {"name": "dead-route", "match": {"prefix": "/dead/"}, "authn": ["dead-introspection"]},
            {"name": "basic-route", "match": {"prefix": "/basic/"}, "authn": ["basic-users"]},
        ],
    })
    return main


def _strip_regex(config: Path) -> str:
    """What ``extauthz validate --strip-regex`` prints: the documented way to strip every
    identity header of a configuration on routes with ext_authz disabled."""
    done = subprocess.run([sys.executable, "-m", "extauthz", "validate", "--config", str(config),
                           "--strip-regex"], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip().splitlines()[-1]


def _with_alias_route(source: Path, dest: Path, *, grpc: bool, strip_regex: str) -> Path:
    """``source`` plus two Envoy routes: ``/alias/``, which Envoy names ``public`` (extauthz's
    own matchers know no ``/alias/``, so a 200 there proves the route name came from Envoy), and
    ``/static-claims/``, the shipped ``/static/`` route (ext_authz disabled) with its regex
    replaced by ``strip_regex`` (which also covers the claims_to_headers names)."""
    data = yaml.safe_load(source.read_text())
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    (static,) = [r for r in routes if r["match"].get("prefix") == "/static/"]
    claims = copy.deepcopy(static)
    claims["match"] = {"prefix": "/static-claims/"}
    mutation = claims["typed_per_filter_config"]["envoy.filters.http.header_mutation"]
    mutation["mutations"]["request_mutations"] = [
        {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": strip_regex}}}}]
    routes.insert(routes.index(static), claims)
    alias: dict[str, Any] = {"match": {"prefix": "/alias/"}, "route": {"cluster": "echo"}}
    if grpc:
        alias["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3."
                     "ExtAuthzPerRoute",
            "check_settings": {"context_extensions": {"route": "public"}}}}
    else:
        alias["name"] = "public"
    routes.insert(len(routes) - 1, alias)
    # log the dynamic metadata extauthz returned: gRPC as a structure, HTTP from the
    # x-extauthz-md-* headers (dynamic_metadata_from_headers), both under the filter's name
    keys = (("route", "identity:subject") if grpc
            else ("x-extauthz-md-route", "x-extauthz-md-identity"))
    fields = " ".join(f"md{i}=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:{k})%"
                      for i, k in enumerate(keys))
    log_format = hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"]
    log_format["text_format_source"]["inline_string"] = f"%PATH(NQ)% {fields}\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def grpc_stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[Stack]:
    source = _with_alias_route(ENVOY_GRPC, e2e_dir / "grpc-source.yaml", grpc=True,
                               strip_regex=_strip_regex(extauthz_config))
    running = start_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "grpc",
                          envoy_source=source)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def http_stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[Stack]:
    source = _with_alias_route(ENVOY_HTTP, e2e_dir / "http-source.yaml", grpc=False,
                               strip_regex=_strip_regex(extauthz_config))
    running = start_transport_stack(
        "http", extauthz_config, upstream_port=echo.port, log_dir=e2e_dir / "http",
        source=source, extra_args=("--http-authz-route-header", ROUTE_HEADER,
                                   "--http-authz-cookie-forwarded", "--http-authz-metadata"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def grpc_envoy_stack(extauthz_config: Path, echo: BackgroundApp,
                     e2e_dir: Path) -> Iterator[Stack]:
    source = _with_alias_route(ENVOY_GRPC, e2e_dir / "grpc-envoy-source.yaml", grpc=True,
                               strip_regex=_strip_regex(extauthz_config))
    running = start_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "grpc-envoy",
                          envoy_source=source, transport="grpc-envoy")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def grpc_native_stack(extauthz_config: Path, echo: BackgroundApp,
                      e2e_dir: Path) -> Iterator[Stack]:
    source = _with_alias_route(ENVOY_GRPC, e2e_dir / "grpc-native-source.yaml", grpc=True,
                               strip_regex=_strip_regex(extauthz_config))
    running = start_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "grpc-native",
                          envoy_source=source, transport="grpc-native")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stacks(grpc_stack: Stack, http_stack: Stack, grpc_envoy_stack: Stack,
           grpc_native_stack: Stack) -> dict[str, Stack]:
    return {"grpc": grpc_stack, "http": http_stack, "grpc-envoy": grpc_envoy_stack,
            "grpc-native": grpc_native_stack}


# -- outcomes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What one request produced, normalized to what must not differ between transports."""

    status: int
    client_headers: tuple[tuple[str, str], ...]
    body: Any  # the upstream's view (allowed), the problem (denied), or raw bytes
    raw: Response

    @property
    def upstream(self) -> Mapping[str, Any]:
        assert isinstance(self.body, dict) and self.body.get("upstream") == "echo", self.body
        return self.body

    def upstream_header_list(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.upstream["header_list"]]

    def upstream_header(self, name: str) -> list[str]:
        return [v for k, v in self.upstream_header_list() if k == name]


def outcome(response: Response) -> Outcome:
    """Normalize: the listener port in ``host``, the random ``x-request-id``."""
    body: Any = response.body
    request_ids: list[str] = []
    if response.body:
        try:
            body = json.loads(response.body)
        except ValueError:
            body = response.body
    if isinstance(body, dict) and body.get("upstream") == "echo":
        header_list = []
        for name, value in body["header_list"]:
            if name == "host":
                value = "<listener>"
            elif name == "x-request-id":
                request_ids.append(value)
                value = "<request-id>"
            header_list.append([name, value])
        body = {**body, "header_list": header_list, "headers": None}
        assert len(request_ids) == 1, response.body[:500]
    elif isinstance(body, dict) and "reason" in body:
        assert body.get("request_id"), body
        body = {**body, "request_id": "<request-id>"}
    client = tuple((k, v) for k, v in response.headers if k in CLIENT_HEADERS)
    # Retry-After counts down from each process's own first failure: a valid number of seconds
    # on both, not necessarily the same second
    for name, value in client:
        if name == "retry-after":
            assert value.isdigit() and 0 < int(value) <= 300, value
    client = tuple((k, "<seconds>" if k == "retry-after" else v) for k, v in client)
    return Outcome(response.status, client, body, response)


@dataclass(frozen=True)
class Scenario:
    """One request and what must be true of its outcome on both transports."""

    id: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    #: the status (or the statuses, e.g. 200 or a 400 from an edge rejecting underscores)
    status: int | tuple[int, ...] = 200
    reason: str = ""
    #: more assertions on the outcome (the same function for both transports)
    check: Callable[[Outcome], None] | None = None
    #: the HTTP transport cannot carry this; it must refuse with this status instead
    http_refuses: int = 0
    #: the outcomes may differ in the body only (both refuse with the same status); why
    body_differs: str = ""
    #: the client-visible headers may differ in content-type/content-length only; why
    framing_differs: str = ""
    #: requests sent first (their outcome ignored), e.g. failures that trip a limiter
    prelude: tuple[tuple[tuple[str, str], ...], ...] = ()
    #: a bearer token minted by the module's IdP at send time: (subject, extra claims)
    bearer: tuple[str, Mapping[str, Any]] | None = None

    def request_headers(self, idp: DemoIdP) -> tuple[tuple[str, str], ...]:
        if self.bearer is None:
            return self.headers
        subject, extra = self.bearer
        token = idp.mint(subject, extra=dict(extra) or None)
        return (*self.headers, ("authorization", f"Bearer {token}"))


# -- assertions shared by scenarios -----------------------------------------------------------

RESERVED_SPOOF = "mallory"


def no_spoofed_identity(result: Outcome) -> None:
    """No reserved header (any spelling) carries a client-sent value; credentials absent."""
    if result.status != 200:
        return
    for name, value in result.upstream_header_list():
        canonical = canonical_header(name)
        if canonical.startswith("x-auth-") or canonical == TENANT_HEADER:
            assert RESERVED_SPOOF not in value, (name, value)
            assert name == canonical, f"a spelled variant reached the upstream: {name}"
        assert KEY not in value, f"credential reached the upstream in {name}"


def identity(subject: str, method: str) -> Callable[[Outcome], None]:
    def check(result: Outcome) -> None:
        assert result.upstream_header("x-auth-subject") == [subject]
        assert result.upstream_header("x-auth-method") == [method]
        no_spoofed_identity(result)
    return check


def public_request(result: Outcome) -> None:
    assert not result.upstream_header("x-auth-subject")
    no_spoofed_identity(result)


def upstream_header_is(name: str, value: str) -> Callable[[Outcome], None]:
    def check(result: Outcome) -> None:
        assert result.upstream_header(name) == [value], result.upstream_header_list()
        no_spoofed_identity(result)
    return check


def upstream_cookie(expected: str | None) -> Callable[[Outcome], None]:
    def check(result: Outcome) -> None:
        cookies = result.upstream_header("cookie")
        assert cookies == ([] if expected is None else [expected]), cookies
        no_spoofed_identity(result)
    return check


def upstream_target(expected: str) -> Callable[[Outcome], None]:
    def check(result: Outcome) -> None:
        assert result.upstream["raw_target"] == expected
        assert KEY not in json.dumps(result.upstream)
        no_spoofed_identity(result)
    return check


# -- the table ---------------------------------------------------------------------------------

SPOOF_DASH_DOT = (("x-auth-subject", RESERVED_SPOOF), ("X-AUTH-ADMIN", RESERVED_SPOOF),
                  ("x-auth.subject", RESERVED_SPOOF), ("x-auth.consumer", RESERVED_SPOOF),
                  ("X-Auth-Email", RESERVED_SPOOF), (TENANT_HEADER, RESERVED_SPOOF),
                  ("x-tenant.id", RESERVED_SPOOF))
SPOOF_UNDERSCORE = (("x_auth_subject", RESERVED_SPOOF), ("X_Auth_Consumer", RESERVED_SPOOF),
                    ("x-auth_scopes", RESERVED_SPOOF), ("x_tenant_id", RESERVED_SPOOF))
MANY_HEADERS = tuple((f"x-filler-{i}", "1") for i in range(MAX_HEADERS + 5))


KEY_HEADER = ("x-api-key", KEY)


def _jwt(subject: str, **extra: Any) -> tuple[str, Mapping[str, Any]]:
    return subject, extra


SCENARIOS: list[Scenario] = [
    # allow
    Scenario("allow-api-key", "/reports/q1", (KEY_HEADER,),
             check=identity("demo-client", "api_key")),
    Scenario("allow-jwt", "/profile/me", bearer=_jwt("alice"),
             check=identity("alice", "jwt")),
    Scenario("allow-public", "/public/hello", check=public_request),
    # route named by Envoy (extauthz's matchers know no /alias/: 403 no_route without it)
    Scenario("route-named-by-envoy", "/alias/x", check=public_request),
    # a client-sent route name never counts: on unnamed Envoy routes it is removed before
    # ext_authz (header_mutation), on named ones Envoy's %ROUTE_NAME% replaces it
    Scenario("client-sent-route-name-ignored", "/nowhere",
             (KEY_HEADER, (ROUTE_HEADER, "public")), status=403, reason="no_route"),
    Scenario("client-sent-route-name-on-unnamed-route", "/reports/q1",
             ((ROUTE_HEADER, "public"),), status=401, reason="missing_credential"),
    Scenario("client-sent-route-name-on-named-route", "/alias/x", ((ROUTE_HEADER, "admin"),),
             check=public_request),
    # each deny kind
    Scenario("deny-missing-credential", "/reports/q1", status=401,
             reason="missing_credential"),
    Scenario("deny-invalid-key", "/reports/q1", (("x-api-key", "eak_wrong_key_0000000000"),),
             status=401, reason="invalid_api_key"),
    Scenario("deny-insufficient-scope", "/admin/users", (KEY_HEADER,), status=403,
             reason="insufficient_scope"),
    Scenario("deny-no-route", "/nowhere", (KEY_HEADER,), status=403, reason="no_route"),
    Scenario("deny-too-many-headers", "/public/hello", MANY_HEADERS, status=400,
             reason="too_many_headers"),
    Scenario("deny-too-many-attempts", "/basic/x", (WRONG_BASIC,), status=429,
             reason="too_many_attempts", prelude=((WRONG_BASIC,),) * BASIC_MAX_FAILURES),
    Scenario("deny-dependency-down", "/dead/x", (("authorization", "Bearer opaque-token"),),
             status=503,
             body_differs="a 5xx from an HTTP authorization service is an error to Envoy: "
                          "status_on_error (503) without extauthz's body"),
    # identity values: UTF-8 goes through identically; control characters deny
    Scenario("identity-utf8", "/profile/me", bearer=_jwt("zoë", email="zoë@exämple.org"),
             check=identity("zoë", "jwt")),
    Scenario("identity-utf8-claim", "/profile/me", bearer=_jwt("alice", email="日本@例え.jp"),
             check=upstream_header_is("x-auth-email", "日本@例え.jp")),
    Scenario("identity-crlf-subject", "/profile/me",
             bearer=_jwt("alice\r\nx-auth-admin: true"),
             status=403, reason="identity_not_representable"),
    Scenario("identity-nul-claim", "/profile/me",
             bearer=_jwt("alice", email="alice\x00@example.org"), status=403,
             reason="identity_not_representable"),
    Scenario("identity-c1-claim", "/profile/me",
             bearer=_jwt("alice", email="alice\x85@example.org"), status=403,
             reason="identity_not_representable"),
    Scenario("identity-lone-surrogate-claim", "/profile/me",
             bearer=_jwt("alice", email="alice\ud800@example.org"), status=403,
             reason="identity_not_representable"),
    # HTTP/1 strips surrounding spaces: an HTTP/2 upstream would see another value; denied
    Scenario("identity-padded-claim", "/profile/me", bearer=_jwt("alice", email=" a@b.example "),
             status=403, reason="identity_not_representable"),
    Scenario("identity-empty-claim", "/profile/me", bearer=_jwt("alice", email=""),
             check=upstream_header_is("x-auth-email", "")),
    # client header values that are not ASCII reach the check and the upstream alike
    Scenario("client-header-utf8", "/reports/q1", (KEY_HEADER, ("x-note", "zoë 日本")),
             check=upstream_header_is("x-note", "zoë 日本")),
    Scenario("client-header-latin1-byte", "/reports/q1", (KEY_HEADER, ("x-note", "caf\udce9")),
             check=upstream_header_is("x-note", "caf\udce9")),
    # spoofed identity headers, every spelling, every kind of route
    Scenario("spoof-protected", "/reports/q1", (KEY_HEADER, *SPOOF_DASH_DOT),
             check=identity("demo-client", "api_key")),
    Scenario("spoof-public", "/public/hello", SPOOF_DASH_DOT, check=public_request),
    Scenario("spoof-unmatched-denied", "/nowhere", SPOOF_DASH_DOT, status=403,
             reason="no_route"),
    Scenario("spoof-underscore-protected", "/reports/q1", (KEY_HEADER, *SPOOF_UNDERSCORE),
             status=(200, *UNDERSCORE_REJECTED), check=no_spoofed_identity),
    Scenario("spoof-underscore-public", "/public/hello", SPOOF_UNDERSCORE,
             status=(200, *UNDERSCORE_REJECTED), check=no_spoofed_identity),
    Scenario("spoof-disabled-route", "/static/app.js",
             (("x-auth-subject", RESERVED_SPOOF), ("x-auth.subject", RESERVED_SPOOF),
              ("X-Auth-Admin", RESERVED_SPOOF)), check=public_request),
    # claims_to_headers names outside x-auth- on a disabled route: the route strips what
    # `extauthz validate --strip-regex` prints
    Scenario("spoof-claim-headers-disabled-route", "/static-claims/app.js",
             ((TENANT_HEADER, RESERVED_SPOOF), ("x-tenant.id", RESERVED_SPOOF),
              ("x-auth.subject", RESERVED_SPOOF)), check=public_request),
    Scenario("spoof-underscore-disabled-route", "/static/app.js", SPOOF_UNDERSCORE[:2],
             status=(200, *UNDERSCORE_REJECTED), check=public_request),
    # credentials: headers in every spelling, cookies, query
    Scenario("credential-header-spellings", "/reports/q1",
             (KEY_HEADER, ("x-api.key", KEY), ("X-API-KEY-", "x")),
             check=identity("demo-client", "api_key")),
    Scenario("credential-header-underscore", "/reports/q1", (KEY_HEADER, ("X_Api_Key", KEY)),
             status=(200, *UNDERSCORE_REJECTED), check=identity("demo-client", "api_key")),
    Scenario("cookie-among-others", "/cookie/a",
             (("cookie", f"theme=dark; api_key={KEY}; lang=en"),),
             check=upstream_cookie("theme=dark; lang=en")),
    Scenario("cookie-alone", "/cookie/a", (("cookie", f"api_key={KEY}"),),
             check=upstream_cookie(None)),
    Scenario("cookie-encoded-names", "/cookie/a",
             (("cookie", f"api_key={KEY}; api%5Fkey={KEY}; API.KEY={KEY}; theme=dark"),),
             check=upstream_cookie("theme=dark")),
    Scenario("cookie-split-headers", "/cookie/a",
             (("cookie", "theme=dark"), ("cookie", f"api_key={KEY}"), ("cookie", "lang=en")),
             check=upstream_cookie("theme=dark; lang=en")),
    Scenario("query-credential", f"/query/a?api_key={KEY}&page=2",
             check=upstream_target("/query/a?page=2"), http_refuses=503),
    Scenario("query-credential-encoded-name", f"/query/a?api%5Fkey={KEY}&page=2",
             check=upstream_target("/query/a?page=2"), http_refuses=503),
    Scenario("query-credential-other-spellings", f"/query/a?page=2&API.KEY=x&api_key={KEY}",
             check=upstream_target("/query/a?page=2"), http_refuses=503),
    # a second copy after ';' (read by upstreams that split on ';'; Envoy cannot remove it)
    Scenario("query-credential-after-semicolon", f"/query/a?api_key={KEY}&page=2;api_key={KEY}",
             status=400, reason="bad_request"),
    # HEAD: no body on either side, same status and headers
    Scenario("head-allowed", "/reports/q1", (KEY_HEADER,), method="HEAD"),
    Scenario("head-denied", "/reports/q1", method="HEAD", status=401,
             framing_differs="the HTTP transport's answer to a HEAD check has no body, and Envoy's "
                             "deny reply built from it has no content-type or content-length "
                             "(HTTP/1.1: transfer-encoding: chunked); nothing follows either way"),
]


def _send(stack: Stack, scenario: Scenario, version: str, idp: DemoIdP) -> Outcome:
    for headers in scenario.prelude:
        curl_request(stack.base_url + scenario.path, headers=headers, version=version)
    response = curl_request(stack.base_url + scenario.path, method=scenario.method,
                            headers=scenario.request_headers(idp), version=version)
    return outcome(response)


def _expect(scenario: Scenario, result: Outcome, transport: str) -> None:
    detail = f"{transport}: {result.status} {result.raw.headers} {result.raw.body[:400]!r}"
    wanted = scenario.status if isinstance(scenario.status, tuple) else (scenario.status,)
    assert result.status in wanted, detail
    if scenario.reason and result.raw.body and scenario.method != "HEAD":
        assert isinstance(result.body, dict) and result.body.get("reason") == scenario.reason, \
            detail
    if scenario.check is not None and result.status == 200:
        scenario.check(result)


@pytest.mark.parametrize("version", HTTP_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_both_transports_give_the_same_result(
    stacks: dict[str, Stack], idp: DemoIdP, scenario: Scenario, version: str
) -> None:
    results = {t: _send(stacks[t], scenario, version, idp) for t in TRANSPORTS}
    grpc, http = results["grpc"], results["http"]
    _expect(scenario, grpc, "grpc")
    # the Envoy front carries the same CheckRequest/CheckResponse: identical in every respect
    for other in ("grpc-envoy", "grpc-native"):
        front = results[other]
        assert (front.status, front.client_headers, front.body) == \
            (grpc.status, grpc.client_headers, grpc.body), (other, front.raw.body[:400])
    if scenario.http_refuses:
        # the HTTP transport cannot carry this decision: refused, never silently different
        assert http.status == scenario.http_refuses, (http.status, http.raw.body[:300])
        assert KEY not in http.raw.body.decode("utf-8", "replace")
        return
    _expect(scenario, http, "http")
    assert http.status == grpc.status
    if scenario.body_differs:
        return
    if scenario.framing_differs:
        framing = ("content-type", "content-length")
        assert [h for h in http.client_headers if h[0] not in framing] == \
            [h for h in grpc.client_headers if h[0] not in framing]
    else:
        assert http.client_headers == grpc.client_headers
    assert http.body == grpc.body


def test_head_checks_cause_no_protocol_errors(stacks: dict[str, Stack]) -> None:
    """A body on a response to HEAD would be read as the next response (a protocol error)."""
    http = stacks["http"]
    for _ in range(3):
        for headers in ((("x-api-key", KEY),), ()):
            curl_request(http.base_url + "/reports/q1", method="HEAD", headers=headers)
    # the connections to extauthz stay usable: a GET after the HEADs on the same pool works
    after = curl_request(http.base_url + "/reports/q1", headers=(("x-api-key", KEY),))
    assert after.status == 200
    stats = curl_request(http.admin_url + "/stats?filter=extauthz.upstream_cx_protocol_error")
    assert stats.status == 200
    counters = dict(line.split(": ") for line in stats.text.strip().splitlines() if ": " in line)
    assert counters.get("cluster.extauthz.upstream_cx_protocol_error") == "0", stats.text


def _access_log_line(stack: Stack, path: str, timeout: float = 15.0) -> str:
    """The Envoy access log line of ``path`` (the stdout logger flushes on its own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        log = (stack.log_dir / "envoy.log").read_text(errors="replace")
        for line in log.splitlines():
            if line.startswith(path + " "):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log line for {path}: {log[-1000:]}")
        time.sleep(0.2)


def test_dynamic_metadata_reaches_envoy_on_both_transports(stacks: dict[str, Stack]) -> None:
    """gRPC: the CheckResponse's dynamic_metadata; HTTP: the x-extauthz-md-* response headers
    through dynamic_metadata_from_headers. Both name the route and the subject."""
    for transport, stack in stacks.items():
        path = f"/reports/md-{transport}-{uuid.uuid4().hex}"
        assert curl_request(stack.base_url + path, headers=(KEY_HEADER,)).status == 200
        line = _access_log_line(stack, path)
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        assert fields["md0"] == "reports", line
        if transport != "http":
            assert fields["md1"] == "demo-client", line
        else:  # a JSON string (Envoy's access log quotes nothing; the JSON is compact)
            assert json.loads(fields["md1"])["subject"] == "demo-client", line
