"""The edge holds (issue 12): what the client controls does not decide who it is, which scheme it
used, or which path is judged -- through the shipped Envoy files, over both transports.

``stack`` is parametrized: ``grpc`` runs deploy/envoy/envoy.yaml, ``http`` runs
deploy/envoy/envoy-http-authz.yaml (extauthz reads the client address from the header Envoy sets
from ``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``). ``weak`` runs the same files without
``use_remote_address`` and ``scheme_header_transformation``: there the same attacks succeed,
which shows that the settings, not luck, stop them.

The extauthz configuration is the demo's plus four routes reached through Envoy's catch-all
route: ``/net/ten/`` (API key, client in 10.0.0.0/8), ``/net/loopback/`` (client in
127.0.0.0/8), ``/tls-only/`` (API key, CEL ``request.scheme == "https"``) and
``/basic-limited/`` (Basic, 3 failures per user and per client address).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extauthz.demo import DEMO_API_KEY
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import assert_denied, h2_request, upstream_headers
from tests.support.processes import Stack, render_policies
from tests.support.transports import TRANSPORTS, start_transport_stack

KEY = {"x-api-key": DEMO_API_KEY}
MAX_FAILURES = 3  # Basic's per-user and per-address limit on /basic-limited/
HCM = "envoy.filters.network.http_connection_manager"


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP) -> Path:
    main = render_policies(e2e_dir / "policies", issuer=idp.issuer)
    htpasswd = e2e_dir / "edge.htpasswd"  # one {SHA} user: the limiter needs a user file
    digest = base64.b64encode(hashlib.sha1(b"right password").digest()).decode()
    htpasswd.write_text(f"alice:{{SHA}}{digest}\n")
    (main.parent / "routes.d" / "edge.yaml").write_text(f"""\
routes:
- name: from-ten
  match: {{prefix: /net/ten/}}
  authn: [demo-keys]
  authz: {{rules: [{{source: {{allow: [10.0.0.0/8]}}}}]}}
- name: from-loopback
  match: {{prefix: /net/loopback/}}
  authn: [demo-keys]
  authz: {{rules: [{{source: {{allow: [127.0.0.0/8]}}}}]}}
- name: tls-only
  match: {{prefix: /tls-only/}}
  authn: [demo-keys]
  authz: {{rules: [{{cel: 'request.scheme == "https"'}}]}}
- name: basic-limited
  match: {{prefix: /basic-limited/}}
  authn: [limited]
authenticators:
  limited:
    basic: {{htpasswd_file: {htpasswd}, max_failures: {MAX_FAILURES}, window_seconds: 300}}
""")
    return main


def _start(transport: str, config: Path, echo: BackgroundApp, log_dir: Path,
           **changes: Any) -> Stack:
    """The shipped Envoy file of ``transport``, its connection managers changed by
    ``changes`` (see :func:`_change_managers`), in front of extauthz and the echo upstream."""
    running = start_transport_stack(
        transport, config, upstream_port=echo.port, log_dir=log_dir,
        envoy_edit=(lambda data: _change_managers(data, **changes)) if changes else None)
    running._extra["transport"] = transport
    return running


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(request: pytest.FixtureRequest, extauthz_config: Path, echo: BackgroundApp,
          e2e_dir: Path) -> Iterator[Stack]:
    running = _start(request.param, extauthz_config, echo, e2e_dir / request.param)
    try:
        yield running
    finally:
        running.stop()


def _change_managers(data: dict[str, Any], **changes: Any) -> None:
    """Change every HTTP connection manager of a rendered Envoy config: a key set to a value,
    or removed when the value is None."""
    for listener in data["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == HCM:
                    typed = network_filter["typed_config"]
                    for key, value in changes.items():
                        if value is None:
                            typed.pop(key)
                        else:
                            typed[key] = value


@pytest.fixture(scope="module", params=TRANSPORTS)
def weak(request: pytest.FixtureRequest, extauthz_config: Path, echo: BackgroundApp,
         e2e_dir: Path) -> Iterator[Stack]:
    # what the issue found: no use_remote_address, no :scheme pin
    running = _start(request.param, extauthz_config, echo, e2e_dir / f"weak-{request.param}",
                     use_remote_address=None, scheme_header_transformation=None)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module", params=TRANSPORTS)
def behind_proxy(request: pytest.FixtureRequest, extauthz_config: Path, echo: BackgroundApp,
                 e2e_dir: Path) -> Iterator[Stack]:
    # as deploy/envoy/README.md says to run behind one L7 proxy that appends to X-Forwarded-For
    # and sets X-Forwarded-Proto: one trusted hop, no :scheme pin
    running = _start(request.param, extauthz_config, echo, e2e_dir / f"proxy-{request.param}",
                     xff_num_trusted_hops=1, scheme_header_transformation=None)
    try:
        yield running
    finally:
        running.stop()


def transport(stack: Stack) -> str:
    name: str = stack._extra["transport"]
    return name


# -- who the client is -----------------------------------------------------------------------


def test_client_sent_x_forwarded_for_does_not_change_the_source(stack: Stack) -> None:
    spoofed = {**KEY, "x-forwarded-for": "10.1.2.3"}
    assert_denied(stack.get("/net/ten/a", spoofed), 403, "forbidden")
    assert_denied(stack.get("/net/ten/a", {**spoofed, "x-real-ip": "10.1.2.3"}), 403, "forbidden")
    seen = upstream_headers(stack.get("/net/loopback/a", spoofed))
    # Envoy appends the peer; a loopback peer is written as Envoy's own host address
    assert seen["x-forwarded-for"].startswith("10.1.2.3,")
    assert seen["x-envoy-external-address"] == "127.0.0.1"


def test_without_use_remote_address_x_forwarded_for_picks_the_http_source(weak: Stack) -> None:
    # The finding, reproduced: only the HTTP transport's source (from
    # %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%) follows X-Forwarded-For; gRPC's
    # attributes.source.address is the TCP peer whatever the headers say.
    r = weak.get("/net/ten/a", {**KEY, "x-forwarded-for": "10.1.2.3"})
    if transport(weak) == "http":
        upstream_headers(r)
    else:
        assert_denied(r, 403, "forbidden")


def test_behind_one_trusted_proxy_the_last_forwarded_address_is_the_client(
        behind_proxy: Stack) -> None:
    # The proxy appended the address it saw (10.1.2.3): the HTTP transport's source. An address
    # the client prepended itself is never used. gRPC's attributes.source.address stays the TCP
    # peer (the proxy), whatever xff_num_trusted_hops says: `source` rules see the proxy there.
    seen_by_proxy = behind_proxy.get("/net/ten/a", {**KEY, "x-forwarded-for": "10.1.2.3"})
    forged = behind_proxy.get("/net/ten/a", {**KEY, "x-forwarded-for": "10.1.2.3, 192.168.1.1"})
    assert_denied(forged, 403, "forbidden")
    if transport(behind_proxy) == "http":
        upstream_headers(seen_by_proxy)
    else:
        assert_denied(seen_by_proxy, 403, "forbidden")


def test_behind_one_trusted_proxy_its_x_forwarded_proto_is_the_scheme(
        behind_proxy: Stack) -> None:
    upstream_headers(behind_proxy.get("/tls-only/a", {**KEY, "x-forwarded-proto": "https"}))
    assert_denied(behind_proxy.get("/tls-only/a", {**KEY, "x-forwarded-proto": "http"}), 403,
                  "forbidden")


def _spray_usernames(stack: Stack, rotate_forwarded_for: bool) -> list[int]:
    """Failed Basic logins, a new username each time (the per-user count never trips), from
    one client; with ``rotate_forwarded_for`` each claims another X-Forwarded-For."""
    statuses = []
    for attempt in range(MAX_FAILURES + 2):
        token = base64.b64encode(f"user{attempt}:wrong".encode()).decode()
        headers = {"authorization": f"Basic {token}"}
        if rotate_forwarded_for:
            headers["x-forwarded-for"] = f"10.9.0.{attempt}"
        statuses.append(stack.get("/basic-limited/x", headers).status)
    return statuses


def test_rotating_x_forwarded_for_does_not_escape_basic_per_address_limit(stack: Stack) -> None:
    statuses = _spray_usernames(stack, rotate_forwarded_for=True)
    assert statuses == [401] * MAX_FAILURES + [429, 429]
    r = stack.get("/basic-limited/x", {"authorization": "Basic dXNlcjk6d3Jvbmc=",
                                       "x-forwarded-for": "10.9.9.9"})
    assert_denied(r, 429, "too_many_attempts")
    assert r.header("retry-after")


def test_without_use_remote_address_rotating_x_forwarded_for_escaped_it(weak: Stack) -> None:
    # The finding on the HTTP transport: every attempt looked like a new address.
    statuses = _spray_usernames(weak, rotate_forwarded_for=True)
    if transport(weak) == "http":
        assert statuses == [401] * (MAX_FAILURES + 2)
    else:
        assert statuses == [401] * MAX_FAILURES + [429, 429]


# -- which scheme the client used -------------------------------------------------------------


def test_client_sent_x_forwarded_proto_https_is_not_the_scheme(stack: Stack) -> None:
    assert_denied(stack.get("/tls-only/a", {**KEY, "x-forwarded-proto": "https"}), 403,
                  "forbidden")
    seen = upstream_headers(stack.get("/public/a", {"x-forwarded-proto": "https"}))
    assert seen["x-forwarded-proto"] == "http"  # Envoy overwrote it


def test_http2_scheme_https_on_a_plaintext_connection_is_not_the_scheme(stack: Stack) -> None:
    r = h2_request(stack.url("/tls-only/a"), {**KEY, ":scheme": "https"})
    assert (r.status, r.reason) == (403, "forbidden"), r.body[-600:]
    assert (h2_request(stack.url("/tls-only/a"), KEY).status) == 403


def test_without_the_edge_settings_the_client_chooses_the_scheme(weak: Stack) -> None:
    # X-Forwarded-Proto becomes :scheme (gRPC) and is forwarded as is (HTTP): both say https
    assert weak.get("/tls-only/a", {**KEY, "x-forwarded-proto": "https"}).status == 200
    if transport(weak) == "grpc":
        # HTTP/2 :scheme is trusted by Envoy; only scheme_header_transformation pins it
        assert h2_request(weak.url("/tls-only/a"), {**KEY, ":scheme": "https"}).status == 200


# -- header names with underscores ------------------------------------------------------------


@pytest.mark.parametrize("name", ["x_auth_subject", "X_Auth_Consumer", "x_api_key"])
@pytest.mark.parametrize("path", ["/public/a", "/static/a", "/reports/q1"])
def test_a_header_name_with_an_underscore_is_refused_by_envoy(
        stack: Stack, name: str, path: str) -> None:
    r = stack.get(path, {**KEY, name: "mallory"})
    assert r.status == 400, r.text[:300]
    assert "upstream" not in r.text  # Envoy answered; neither extauthz nor the upstream saw it
    h2 = h2_request(stack.url(path), {**KEY, name.lower(): "mallory"})
    assert h2.reset and h2.status is None, h2.body[-600:]


# -- paths ------------------------------------------------------------------------------------

#: Paths Envoy's normalization passes through unchanged but a backend may resolve elsewhere;
#: the guard route sends them to the check (also under /static/, where ext_authz is disabled)
#: and extauthz refuses them.
AMBIGUOUS = [
    "/public/%2e%2e;/admin/secret",     # Envoy decodes the dots to "..;" and keeps it
    "/static/%2e%2e;/admin/secret",
    "/static/%2E%2e;x=1/admin/secret",
    "/static/..%3b/admin/secret",
    "/admin;x=1/secret",
    "/public/a;jsessionid=0123",
    "/static/a%3Bb",
    "/static/%252e%252e/admin/secret",  # double encoding
    "/static/%252f",
    "/static/%%32%65%%32%65/admin",     # Envoy makes this %252e%252e
    "/static/files/100%25.txt",
    "/static/%c0%ae%c0%ae/admin",       # overlong UTF-8 dots
    "/static/%e0%80%ae%e0%80%ae/admin",
    "/static/a%zz",
    "/static/a%",
    "/static/a%0d%0ax",
]


@pytest.mark.parametrize("path", AMBIGUOUS)
def test_ambiguous_paths_are_refused_with_400(stack: Stack, path: str) -> None:
    assert_denied(stack.get(path, KEY), 400, "bad_request")


@pytest.mark.parametrize(("path", "normalized"), [
    ("/static/../admin/secret", "/admin/secret"),
    ("/static/%2e%2e/admin/secret", "/admin/secret"),
    ("/static/..;/admin/secret", "/admin/secret"),       # Envoy resolves a literal "..;"
    ("/static/..;x=1/admin/secret", "/admin/secret"),
    ("/static/..\\admin\\secret", "/admin/secret"),      # "\" is a "/" to Envoy
])  # fmt: skip
def test_a_disabled_route_cannot_be_escaped_with_dot_segments(
        stack: Stack, path: str, normalized: str) -> None:
    # Normalized in the connection manager, before routing: the admin route is checked (no
    # credential: 401), the /static/ route (ext_authz disabled) is never chosen.
    r = stack.get(path)
    assert_denied(r, 401, "missing_credential")
    assert _checked_path(stack, r) == normalized


@pytest.mark.parametrize("path", ["/public/../admin/x", "/reports%2f..%2fadmin/x",
                                  "/static/%2F..%2Fadmin/x", "/static/a%5cb"])
def test_encoded_slashes_are_refused_by_envoy(stack: Stack, path: str) -> None:
    r = stack.get(path, KEY)
    if "%" in path:
        assert r.status == 400 and "upstream" not in r.text, r.text[:200]
    else:
        assert_denied(r, 403, "insufficient_scope")  # /admin/x for a key without scope admin


@pytest.mark.parametrize(("path", "raw"), [
    ("/static/a%20b", "/static/a%20b"),
    ("/static/caf%C3%A9.css", "/static/caf%C3%A9.css"),
    ("/static/./app.js", "/static/app.js"),
    ("/static/%41pp.js", "/static/App.js"),              # unreserved escapes are decoded
    # dot segments first, then slashes merged: ".." removes the empty segment; the upstream
    # gets this path, not the original, so it cannot resolve it otherwise
    ("/static//..//admin/secret", "/static/admin/secret"),
])  # fmt: skip
def test_unambiguous_static_paths_are_still_served_as_normalized(
        stack: Stack, path: str, raw: str) -> None:
    r = stack.get(path)
    upstream_headers(r)
    assert r.json()["raw_path"] == raw


def _checked_path(stack: Stack, response: Response) -> str:
    """The path extauthz judged for this response (its decision log line, by request id)."""
    path: str = _decision(stack, response.problem().get("request_id", ""))["path"]
    return path


# -- the decision log -------------------------------------------------------------------------


def test_the_decision_log_has_no_part_of_the_query_string(stack: Stack) -> None:
    secret = "eak_edge_query_secret_not_a_key_01"
    paths = [f"/reports/q1?{secret}", f"/reports/q1?api_key={secret}", f"/reports/q1?{secret}=x",
             f"/public/a?page=1&{secret}", f"/nowhere?{secret}", f"/public/a;s={secret}"]
    logged = []
    for path in paths:
        r = stack.get(path, KEY)
        assert r.status in (200, 400, 403), r.text[:200]
        request_id = r.problem().get("request_id") or r.json()["headers"]["x-request-id"]
        logged.append(_decision(stack, request_id)["path"])
    assert logged == ["/reports/q1", "/reports/q1", "/reports/q1", "/public/a", "/nowhere",
                      "/public/a;"]
    assert secret not in stack.extauthz.log_text()


def _decision(stack: Stack, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """extauthz's decision log record for ``request_id`` (written in batches: wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in stack.extauthz.log_text().splitlines():
            if line.startswith("{") and f'"request_id":"{request_id}"' in line:
                found: dict[str, Any] = json.loads(line)
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no decision log line for {request_id}")
        time.sleep(0.05)
