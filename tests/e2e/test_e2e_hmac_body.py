"""Issue 14 finding 1 through the real Envoy: a covered body digest passes only against the body
extauthz actually received, whole — on both transports, with and without ``with_request_body``.

The attack: a client signs ``content-digest`` (or, Kong/APISIX profile, ``Digest``) of the *empty*
body and sends a body anyway. Where Envoy forwards no body, extauthz used to hash ``b""`` and
allow, and the upstream received the attacker's bytes.

Three Envoys, each the shipped file on free ports with four test routes in front:

``grpc-body``   deploy/envoy/envoy-body.yaml (gRPC, ``with_request_body`` 8 KiB, partial allowed)
``grpc-plain``  deploy/envoy/envoy.yaml (gRPC, no ``with_request_body`` at all)
``http-body``   deploy/envoy/envoy-http-authz.yaml (HTTP transport, ``with_request_body`` 64 KiB)
``http-plain``  the same without ``with_request_body``

Routes: ``/sig/`` (RFC 9421, ``require_digest``) and ``/kong/`` (draft-cavage ``Digest``,
``require_digest``) use the filter's own body setting; ``/nb/sig/`` and ``/nb/kong/`` turn body
buffering off per route (``check_settings.disable_request_body_buffering: true``).

Every deny is asserted as the client sees it (401, problem+json reason, challenge); the gRPC
code of these reasons is asserted in tests/unit/test_hmac_sig.py
(test_body_not_forwarded_is_401_unauthenticated_over_the_pipeline).
"""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_lib
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import ENVOY_CONFIG
from extauthz.demo.httpclient import Response
from extauthz.demo.procs import LOOPBACK
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.envoy_body import (
    BODY_ENVOY_CONFIG,
    EXT_AUTHZ,
    PER_ROUTE,
    BodyStack,
    send,
    start_env_stack,
    start_http_stack,
)
from tests.support.processes import write_config
from tests.support.signing import (
    Message,
    SignatureInput,
    cavage_authorization,
    content_digest,
    legacy_digest,
    sign_rfc9421,
)

SECRET = b"body-forwarding-secret-0123456789abcdef"
KEY = "body-client"
COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest")
INVALID = 'error="invalid_signature"'
BODY = b'{"transfer": 10}'
EVIL = b'{"transfer": 1000000, "to": "mallory"}'
#: above both max_request_bytes (8 KiB gRPC, 64 KiB HTTP): Envoy forwards a truncated prefix
LARGE = b"L" * (70 * 1024)

#: stack -> does Envoy forward the body on the routes without the per-route switch?
FORWARDS = {"grpc-body": True, "grpc-plain": False, "http-body": True, "http-plain": False}


def _route(prefix: str, name: str, cluster: str, *, no_body: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {"context_extensions": {"route": name}}
    if no_body:
        settings["disable_request_body_buffering"] = True
    return {
        "match": {"prefix": prefix},
        "route": {"cluster": cluster},
        "typed_per_filter_config": {EXT_AUTHZ: {"@type": PER_ROUTE, "check_settings": settings}},
    }


def _routes(cluster: str) -> list[dict[str, Any]]:
    return [
        _route("/nb/sig/", "nb-sig", cluster, no_body=True),
        _route("/nb/kong/", "nb-kong", cluster, no_body=True),
        _route("/sig/", "sig", cluster, no_body=False),
        _route("/kong3/", "kong3", cluster, no_body=False),
        _route("/kong/", "kong", cluster, no_body=False),
    ]


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path) -> Path:
    (e2e_dir / "body.key").write_bytes(SECRET)
    keys = [{"id": KEY, "secret_file": str(e2e_dir / "body.key")}]
    timing = {"max_skew_seconds": 60, "max_age_seconds": 60}
    return write_config(e2e_dir / "extauthz-body.yaml", {
        "version": 1,
        "authenticators": {
            "sig": {"hmac": {"keys": keys, "require_digest": True, **timing}},
            "kong": {"hmac": {"profile": "cavage", "keys": keys, "require_digest": True,
                              "required_components": ["@method", "@path", "@query"], **timing}},
            "kong3": {"hmac": {"profile": "cavage", "dialect": "kong", "keys": keys,
                               "required_components": ["@method", "@path", "@query"],
                               **timing}},
        },
        # match blocks for the HTTP transport (no context_extensions there), same names
        "routes": [
            {"name": "nb-sig", "match": {"prefix": "/nb/sig/"}, "authn": ["sig"]},
            {"name": "nb-kong", "match": {"prefix": "/nb/kong/"}, "authn": ["kong"]},
            {"name": "sig", "match": {"prefix": "/sig/"}, "authn": ["sig"]},
            {"name": "kong3", "match": {"prefix": "/kong3/"}, "authn": ["kong3"]},
            {"name": "kong", "match": {"prefix": "/kong/"}, "authn": ["kong"]},
        ],
    })  # fmt: skip


@pytest.fixture(scope="module", params=list(FORWARDS))
def stack(
    request: pytest.FixtureRequest, extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path
) -> Iterator[tuple[str, BodyStack]]:
    name: str = request.param
    log_dir = e2e_dir / f"logs-{name}"
    if name.startswith("http"):
        running = start_http_stack(extauthz_config, echo_port=echo.port, log_dir=log_dir,
                                   routes=_routes("echo"), body=name == "http-body")
    else:
        source, cluster = (
            (BODY_ENVOY_CONFIG, "upstream") if name == "grpc-body" else (ENVOY_CONFIG, "echo")
        )
        running = start_env_stack(extauthz_config, echo_port=echo.port, log_dir=log_dir,
                                  routes=_routes(cluster), source=source)
    try:
        yield name, running
    finally:
        running.stop()


def _signed(
    stack: BodyStack, profile: str, method: str, target: str, signed_body: bytes
) -> list[tuple[str, str]]:
    """The headers a client sends: a valid signature over the digest of ``signed_body``."""
    authority = f"{LOOPBACK}:{stack.ports.listener}"
    if profile == "sig":
        headers = [("Content-Digest", content_digest(signed_body))]
        message = Message(method, authority, target, headers)
        params = SignatureInput(COMPONENTS, created=int(time.time()), keyid=KEY)
        return headers + sign_rfc9421(message, params, SECRET)
    headers = [("Date", formatdate(time.time(), usegmt=True)),
               ("Digest", legacy_digest(signed_body))]
    message = Message(method, authority, target, headers)
    auth = cavage_authorization(message, ("(request-target)", "date", "digest"), key_id=KEY,
                                secret=SECRET)
    return [*headers, ("Authorization", auth)]


def _send(
    stack: BodyStack, method: str, target: str, headers: list[tuple[str, str]],
    body: bytes | None, *, chunk_size: int | None = None,
) -> Response:
    return send(stack.ports.listener, method, target, headers, body, chunk_size=chunk_size)


def _target(profile: str, forwarded_route: bool) -> str:
    return f"/{profile}/x" if forwarded_route else f"/nb/{profile}/x"


PROFILES = ["sig", "kong"]
ROUTE_KINDS = [True, False]  # the filter's body setting / body buffering off on the route


def _forwarded(name: str, forwarded_route: bool) -> bool:
    return FORWARDS[name] and forwarded_route


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("forwarded_route", ROUTE_KINDS)
def test_signed_body_is_allowed_only_where_envoy_forwards_it(
    stack: tuple[str, BodyStack], profile: str, forwarded_route: bool
) -> None:
    name, running = stack
    target = _target(profile, forwarded_route)
    r = _send(running, "POST", target, _signed(running, profile, "POST", target, BODY), BODY)
    if _forwarded(name, forwarded_route):
        assert upstream_headers(r)["x-auth-subject"] == KEY
        assert int(r.json()["body_bytes"]) == len(BODY)
    else:
        assert_denied(r, 401, "body_not_forwarded", challenge_contains=(INVALID,))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("forwarded_route", ROUTE_KINDS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_attack_empty_body_digest_with_a_body_is_refused(
    stack: tuple[str, BodyStack], profile: str, forwarded_route: bool, chunked: bool
) -> None:
    name, running = stack
    target = _target(profile, forwarded_route)
    headers = _signed(running, profile, "POST", target, b"")
    r = _send(running, "POST", target, headers, EVIL, chunk_size=8 if chunked else None)
    if _forwarded(name, forwarded_route):
        assert_denied(r, 401, "digest_mismatch", challenge_contains=(INVALID,))
    else:
        assert_denied(r, 401, "body_not_forwarded", challenge_contains=(INVALID,))


@pytest.mark.parametrize("profile", PROFILES)
def test_attack_body_beyond_the_buffer_is_refused_as_truncated(
    stack: tuple[str, BodyStack], profile: str
) -> None:
    name, running = stack
    target = _target(profile, True)
    r = _send(running, "POST", target, _signed(running, profile, "POST", target, LARGE), LARGE)
    reason = "body_truncated" if FORWARDS[name] else "body_not_forwarded"
    assert_denied(r, 401, reason, challenge_contains=(INVALID,))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("forwarded_route", ROUTE_KINDS)
def test_bodyless_request_passes_only_when_it_declares_content_length_zero(
    stack: tuple[str, BodyStack], profile: str, forwarded_route: bool
) -> None:
    # Content-Length: 0 is the client's own word, visible over gRPC only: the HTTP transport
    # sees Envoy's content-length (of the check request), never the client's.
    name, running = stack
    target = _target(profile, forwarded_route)
    headers = _signed(running, profile, "GET", target, b"")
    declared = _send(running, "GET", target, headers, b"")  # sends Content-Length: 0
    if name.startswith("grpc"):
        assert upstream_headers(declared)["x-auth-subject"] == KEY
    else:
        assert_denied(declared, 401, "body_not_forwarded", challenge_contains=(INVALID,))
    silent = _send(running, "GET", target, _signed(running, profile, "GET", target, b""), None)
    assert_denied(silent, 401, "body_not_forwarded", challenge_contains=(INVALID,))


def test_kong_signature_as_kong_3_sends_it_is_allowed(stack: tuple[str, BodyStack]) -> None:
    """Issue 14 finding 3 on the wire: Kong's ``hmac`` scheme, ``@request-target`` signed as
    ``post /path?query`` (method lowercased) and header names listed in upper case."""
    _, running = stack
    target = "/kong3/orders?page=2"
    date = formatdate(time.time(), usegmt=True)
    signing = "\n".join([f"Date: {date}", f"@request-target: post {target}", "X-Tenant: t1"])
    mac = base64.b64encode(hmac_lib.new(SECRET, signing.encode(), hashlib.sha256).digest())
    auth = (f'hmac username="{KEY}", algorithm="hmac-sha256", '
            f'headers="Date @request-target X-Tenant", signature="{mac.decode()}"')
    headers = [("Date", date), ("X-Tenant", "t1"), ("Authorization", auth)]
    r = _send(running, "POST", target, headers, BODY)
    assert upstream_headers(r)["x-auth-subject"] == KEY
    tampered = _send(running, "POST", "/kong3/orders?page=3", headers, BODY)
    assert_denied(tampered, 401, "bad_signature")
