"""HMAC request signatures through the real Envoy: client -> Envoy (with_request_body) -> extauthz.

Envoy runs ``deploy/envoy/envoy-body.yaml`` (``with_request_body: {max_request_bytes: 8192,
allow_partial_message: true, pack_as_bytes: true}``, see :mod:`tests.support.envoy_body`) with
the test routes below in front of its own, on two listeners: ``main`` (the deploy file's) and
``raw`` (the same with ``encode_raw_headers: true``). Requests are signed by
:mod:`tests.support.signing`, a signer written from the RFCs without extauthz's code.

Envoy route -> extauthz route -> authenticator:

``/webhooks/``  webhooks   (the deploy file's route) ``partners``: RFC 9421, covers @method
                           @authority @path @query content-type + content-digest
                           (``require_digest``), skew 30 s, max age 60 s
``/nodigest/``  nodigest   ``partners-nobody``: the same keys, body not required
``/strict/``    strict     ``partners``, but the Envoy route overrides ``with_request_body``
                           with ``allow_partial_message: false``
``/orders/``    orders     ``partners`` + ``authz.scopes_all: [orders:write]``
``/cavage/``    cavage     ``legacy``: draft-cavage, ``require_digest`` (``Digest`` header)
``/kong/``      kong       ``kong``: draft-cavage as Kong's hmac-auth sends it (``request-line``)

Keys (secrets written at test time): ``acme-2025`` (file, raw; consumer ``acme``), ``globex``
(environment variable ``EXTAUTHZ_E2E_HMAC_GLOBEX``, base64; no consumer), ``test-shared-secret``
(file, base64: RFC 9421's own test key).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest
import yaml

from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.envoy import EnvoyPorts, validate_config
from tests.support.envoy_body import (
    BODY_ENVOY_CONFIG,
    MAX_REQUEST_BYTES,
    BodyStack,
    body_route,
    ext_authz_filter,
    render_body_config,
    start_env_stack,
)
from tests.support.processes import write_config
from tests.support.signing import (
    RFC9421_TEST_SHARED_SECRET_B64,
    Message,
    SignatureInput,
    cavage_authorization,
    content_digest,
    legacy_digest,
    sign_rfc9421,
    signature_base,
)

REALM = "extauthz"
ACME = "acme-2025"
GLOBEX = "globex"
RFC_KEY = "test-shared-secret"
GLOBEX_ENV = "EXTAUTHZ_E2E_HMAC_GLOBEX"
KONG = "kong-client"
SECRETS: dict[str, bytes] = {
    ACME: b"acme-shared-secret-0123456789abcdef-e2e",
    GLOBEX: bytes(range(40)),  # binary: only expressible base64-encoded
    RFC_KEY: base64.b64decode(RFC9421_TEST_SHARED_SECRET_B64),
    KONG: b"kong-client-shared-secret-0123456789abc",
}
SUBJECTS = {ACME: "acme", GLOBEX: GLOBEX, RFC_KEY: RFC_KEY}
COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest", "content-type")
REQUIRED = "@method @authority @path @query content-type content-digest"
CHALLENGE = f'Signature realm="{REALM}", headers="{REQUIRED}"'
INVALID = 'error="invalid_signature"'
TRUNCATED = 'error_description="body truncated"'
JSON = "application/json"

WEBHOOKS = "/webhooks/orders"
NODIGEST = "/nodigest/upload"
STRICT = "/strict/upload"
ORDERS = "/orders/new"
CAVAGE = "/cavage/events"
KONG_PATH = "/kong/events"

ENVOY_ROUTES = [
    body_route("/nodigest/", "nodigest"),
    body_route(
        "/strict/",
        "strict",
        with_request_body={
            "max_request_bytes": MAX_REQUEST_BYTES,
            "allow_partial_message": False,
            "pack_as_bytes": True,
        },
    ),
    body_route("/orders/", "orders"),
    body_route("/cavage/", "cavage"),
    body_route("/kong/", "kong"),
]


def _keys(secret_dir: Path) -> list[dict[str, object]]:
    return [
        {"id": ACME, "secret_file": str(secret_dir / "acme.key"), "consumer": "acme",
         "scopes": ["orders:write"]},
        {"id": GLOBEX, "secret_env": GLOBEX_ENV, "secret_encoding": "base64"},
        {"id": RFC_KEY, "secret_file": str(secret_dir / "rfc9421.key"),
         "secret_encoding": "base64"},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path) -> Path:
    secret_dir = e2e_dir / "secrets"
    secret_dir.mkdir()
    (secret_dir / "acme.key").write_bytes(SECRETS[ACME] + b"\n")  # raw: trailing LF dropped
    (secret_dir / "rfc9421.key").write_text(RFC9421_TEST_SHARED_SECRET_B64 + "\n")
    (secret_dir / "kong.key").write_bytes(SECRETS[KONG])
    keys = _keys(secret_dir)
    timing = {"max_skew_seconds": 30, "max_age_seconds": 60}
    return write_config(
        e2e_dir / "extauthz-hmac.yaml",
        {
            "version": 1,
            "settings": {"realm": REALM},
            "authenticators": {
                "partners": {"hmac": {
                    "keys": keys,
                    "required_components": ["@method", "@authority", "@path", "@query",
                                            "content-type"],
                    "require_digest": True,
                    **timing,
                }},
                "partners-nobody": {"hmac": {"keys": keys, **timing}},
                "legacy": {"hmac": {
                    "profile": "cavage",
                    "keys": [{"id": KONG, "secret_file": str(secret_dir / "kong.key")}],
                    "required_components": ["@method", "@path", "@query"],
                    "require_digest": True,
                    **timing,
                }},
                "kong": {"hmac": {
                    "profile": "cavage",
                    "keys": [{"id": KONG, "secret_file": str(secret_dir / "kong.key")}],
                    "required_components": ["@method", "@path", "@query"],
                    **timing,
                }},
            },
            "routes": [
                {"name": "webhooks", "authn": ["partners"]},
                {"name": "nodigest", "authn": ["partners-nobody"]},
                {"name": "strict", "authn": ["partners"]},
                {"name": "orders", "authn": ["partners"],
                 "authz": {"scopes_all": ["orders:write"]}},
                {"name": "cavage", "authn": ["legacy"]},
                {"name": "kong", "authn": ["kong"]},
            ],
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[BodyStack]:
    globex = base64.b64encode(SECRETS[GLOBEX]).decode("ascii")
    running = start_env_stack(
        extauthz_config,
        echo_port=echo.port,
        log_dir=e2e_dir / "logs",
        routes=ENVOY_ROUTES,
        env={GLOBEX_ENV: globex},
    )
    try:
        yield running
    finally:
        running.stop()


# -- a signed request ------------------------------------------------------------------------------


@dataclass
class Signed:
    """One request as a client signs it; :meth:`send` puts it on the wire through Envoy."""

    stack: BodyStack
    target: str = WEBHOOKS
    body: bytes = b'{"order": 42, "items": ["a", "b"]}'
    method: str = "POST"
    key: str = ACME
    components: Sequence[str] = COMPONENTS
    created: int | None = None
    expires: int | None = None
    nonce: str | None = None
    alg: str | None = None
    host: str | None = None
    extra: Sequence[tuple[str, str]] = ()
    #: what the signer believes the path/query is (default: the target sent)
    signed_target: str | None = None
    #: the secret used (default: the key's)
    secret: bytes | None = None
    listener: str = "main"

    def __post_init__(self) -> None:
        if self.created is None:
            self.created = int(time.time())
        if self.nonce is None:
            self.nonce = secrets.token_urlsafe(12)

    def fields(self, body: bytes | None = None) -> list[tuple[str, str]]:
        """The header fields, with the signature over ``body`` (default: the body sent)."""
        signed_body = self.body if body is None else body
        headers = [("Content-Type", JSON), ("Content-Digest", content_digest(signed_body))]
        headers += list(self.extra)
        authority = self.host or f"127.0.0.1:{self.stack.port(self.listener)}"
        message = Message(self.method, authority, self.signed_target or self.target, headers)
        params = SignatureInput(
            self.components, created=self.created, expires=self.expires, nonce=self.nonce,
            alg=self.alg, keyid=self.key,
        )  # fmt: skip
        secret = self.secret if self.secret is not None else SECRETS[self.key]
        return headers + sign_rfc9421(message, params, secret)

    def send(
        self,
        *,
        body: bytes | None = None,
        fields: Sequence[tuple[str, str]] | None = None,
        chunk_size: int | None = None,
    ) -> Response:
        """Send :meth:`fields` (or ``fields``) with ``body`` (default: the signed body)."""
        return self.stack.send(
            self.method,
            self.target,
            self.fields() if fields is None else fields,
            self.body if body is None else body,
            listener=self.listener,
            host=self.host,
            chunk_size=chunk_size,
        )


def _upstream(response: Response) -> tuple[dict[str, str], int]:
    headers = dict(upstream_headers(response))
    return headers, int(response.json()["body_bytes"])


# -- the deploy file -------------------------------------------------------------------------


def test_body_config_passes_envoy_validate() -> None:
    result = validate_config(BODY_ENVOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_rendered_body_config_passes_envoy_validate(tmp_path: Path) -> None:
    # What the tests run: free ports, the test routes (one with a per-route with_request_body
    # override) and the encode_raw_headers listener.
    path = tmp_path / "envoy-body.yaml"
    path.write_text(render_body_config(EnvoyPorts(20011, 20012, 20013, 20014), 20015,
                                       ENVOY_ROUTES))  # fmt: skip
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_body_config_says_what_the_readme_says() -> None:
    data = yaml.safe_load(BODY_ENVOY_CONFIG.read_text())
    (listener,) = data["static_resources"]["listeners"]
    typed = ext_authz_filter(listener)
    assert typed["with_request_body"] == {
        "max_request_bytes": MAX_REQUEST_BYTES,
        "allow_partial_message": True,
        "pack_as_bytes": True,
    }
    assert typed["failure_mode_allow"] is False
    assert "encode_raw_headers" not in typed
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    named = {
        r["match"]["prefix"]: ctx["route"]
        for r in vhost["routes"]
        if (ctx := r.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
            .get("check_settings", {}).get("context_extensions"))
    }  # fmt: skip
    assert named == {"/webhooks/": "webhooks"}


# -- the test signer itself --------------------------------------------------------------------


def test_test_signer_reproduces_rfc9421_appendix_b25() -> None:
    # RFC 9421 B.2.5 (hmac-sha256 over date, @authority, content-type): the signer agrees with
    # the specification, not merely with extauthz.
    message = Message(
        "POST", "example.com", "/foo?param=Value&Pet=dog",
        [("Date", "Tue, 20 Apr 2021 02:07:55 GMT"), ("Content-Type", JSON)],
    )  # fmt: skip
    params = SignatureInput(
        ("date", "@authority", "content-type"), created=1618884473, keyid=RFC_KEY
    )
    assert signature_base(message, params) == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n"@authority": example.com\n'
        '"content-type": application/json\n'
        '"@signature-params": ("date" "@authority" "content-type")'
        ';created=1618884473;keyid="test-shared-secret"'
    )
    fields = dict(sign_rfc9421(message, params, SECRETS[RFC_KEY], label="sig-b25"))
    assert fields["Signature"] == "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
    assert content_digest(b'{"hello": "world"}\n') == (
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"  # RFC 9530 §B.1
    )


# -- allowed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["main", "raw"])
@pytest.mark.parametrize("key", [ACME, GLOBEX, RFC_KEY])
def test_valid_signature_is_allowed_and_stripped(stack: BodyStack, key: str, listener: str) -> None:
    # globex's secret comes from an environment variable of the extauthz process; the others
    # from files (raw, and base64 for RFC 9421's own test key).
    signed = Signed(stack, target=WEBHOOKS + "?b=2&a=1", key=key, listener=listener)
    seen, body_bytes = _upstream(signed.send())
    assert seen["x-auth-subject"] == SUBJECTS[key]
    assert seen["x-auth-method"] == "hmac"
    assert seen["x-auth-key-id"] == key
    if key == ACME:
        assert seen["x-auth-consumer"] == "acme"
        assert seen["x-auth-scopes"] == "orders:write"
    # The signature is a credential: stripped. The body and its digest go through untouched.
    assert "signature" not in seen
    assert "signature-input" not in seen
    assert seen["content-digest"] == content_digest(signed.body)
    assert body_bytes == len(signed.body)
    # Envoy's partial-body marker is for extauthz only; it never reaches the upstream.
    assert "x-envoy-auth-partial-body" not in seen


def test_body_of_exactly_max_request_bytes_is_allowed(stack: BodyStack) -> None:
    body = b"x" * MAX_REQUEST_BYTES
    seen, body_bytes = _upstream(Signed(stack, body=body).send())
    assert seen["x-auth-subject"] == "acme"
    assert body_bytes == MAX_REQUEST_BYTES


def test_binary_body_is_digested_as_bytes(stack: BodyStack) -> None:
    # pack_as_bytes: true -> raw_body. Not valid UTF-8: as a string (`body`) it would be mangled.
    body = bytes(range(256)) * 4
    seen, body_bytes = _upstream(Signed(stack, body=body).send())
    assert seen["x-auth-key-id"] == ACME
    assert body_bytes == len(body)


def test_chunked_body_is_buffered_and_digested(stack: BodyStack) -> None:
    # No Content-Length: Envoy buffers the chunks until the end of the body (or the limit).
    body = b'{"chunk": "' + b"y" * 3000 + b'"}'
    seen, body_bytes = _upstream(Signed(stack, body=body).send(chunk_size=1000))
    assert seen["x-auth-key-id"] == ACME
    assert body_bytes == len(body)


def test_get_declaring_no_body_signs_the_empty_digest(stack: BodyStack) -> None:
    # The client sends Content-Length: 0, its own statement that there is no body (Envoy
    # enforces it).
    signed = Signed(stack, method="GET", target=WEBHOOKS + "?page=2", body=b"")
    seen, _ = _upstream(signed.send())
    assert seen["x-auth-key-id"] == ACME


def test_get_without_content_length_cannot_prove_it_has_no_body(stack: BodyStack) -> None:
    # Without it, "no body" and "a chunked body Envoy did not buffer" look the same to extauthz
    # (Envoy forwards no transfer-encoding): a covered digest is refused, never read as empty.
    signed = Signed(stack, method="GET", target=WEBHOOKS + "?page=2", body=b"")
    r = stack.send("GET", signed.target, signed.fields(), None)  # no Content-Length at all
    assert_denied(r, 401, "body_not_forwarded", challenge_contains=(INVALID,))


def test_large_unsigned_body_passes_on_a_route_without_require_digest(stack: BodyStack) -> None:
    # allow_partial_message: true -> extauthz is asked with the first 8 KiB; a signature that
    # does not cover the body verifies, and the upstream gets the *whole* body.
    body = b"z" * (3 * MAX_REQUEST_BYTES)
    signed = Signed(stack, target=NODIGEST, body=body, components=COMPONENTS[:4])
    seen, body_bytes = _upstream(signed.send())
    assert seen["x-auth-key-id"] == ACME
    assert body_bytes == len(body)
    assert "x-envoy-auth-partial-body" not in seen  # Envoy tells only extauthz


def test_scope_from_the_key_satisfies_the_route_policy(stack: BodyStack) -> None:
    seen, _ = _upstream(Signed(stack, target=ORDERS).send())
    assert seen["x-auth-scopes"] == "orders:write"


def test_key_without_the_scope_is_403_without_a_bearer_challenge(stack: BodyStack) -> None:
    r = Signed(stack, target=ORDERS, key=GLOBEX).send()
    assert_denied(r, 403, "insufficient_scope")
    assert r.header_values("www-authenticate") == []


def test_client_sent_identity_headers_are_replaced(stack: BodyStack) -> None:
    signed = Signed(stack, extra=[("X-Auth-Subject", "root"), ("X-Auth-Key-Id", GLOBEX)])
    seen, _ = _upstream(signed.send())
    assert seen["x-auth-subject"] == "acme"
    assert seen["x-auth-key-id"] == ACME


# -- denied: the body ----------------------------------------------------------------------------


def test_tampered_body_is_401_digest_mismatch(stack: BodyStack) -> None:
    signed = Signed(stack, body=b'{"amount": 100}')
    r = signed.send(body=b'{"amount": 900}')  # same length; the signed digest is of the original
    assert_denied(r, 401, "digest_mismatch", challenge_contains=(CHALLENGE, INVALID))


def test_digest_recomputed_by_a_tamperer_breaks_the_signature(stack: BodyStack) -> None:
    signed = Signed(stack, body=b'{"amount": 100}')
    forged = [
        (k, content_digest(b'{"amount": 900}') if k == "Content-Digest" else v)
        for k, v in signed.fields()
    ]
    r = signed.send(body=b'{"amount": 900}', fields=forged)
    assert_denied(r, 401, "bad_signature", challenge_contains=(INVALID,))


@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 1, 4 * MAX_REQUEST_BYTES])
def test_body_larger_than_max_request_bytes_is_401_body_truncated(
    stack: BodyStack, size: int
) -> None:
    # The digest and signature are right, but extauthz only sees the first 8 KiB
    # (x-envoy-auth-partial-body: true): a truncated body can never satisfy a digest.
    r = Signed(stack, body=b"a" * size).send()
    assert_denied(r, 401, "body_truncated", challenge_contains=(INVALID, TRUNCATED))


@pytest.mark.parametrize("listener", ["main", "raw"])
@pytest.mark.parametrize("forged_flag", [None, "false"])
def test_bytes_appended_beyond_the_buffer_are_refused(
    stack: BodyStack, listener: str, forged_flag: str | None
) -> None:
    # The attack: a signed body of exactly max_request_bytes, with bytes appended by someone who
    # cannot re-sign. Envoy truncates to the signed prefix, whose digest matches; only the
    # partial-body flag tells extauthz that the upstream would get more than was signed. A
    # client-sent `x-envoy-auth-partial-body: false` must not hide that.
    original = b"o" * MAX_REQUEST_BYTES
    signed = Signed(stack, body=original, listener=listener)
    fields = signed.fields()
    if forged_flag is not None:
        fields.append(("x-envoy-auth-partial-body", forged_flag))
    r = signed.send(body=original + b'&"admin": true', fields=fields)
    assert_denied(r, 401, "body_truncated", challenge_contains=(TRUNCATED,))


def test_client_sent_partial_flag_never_reaches_the_upstream(stack: BodyStack) -> None:
    # Envoy writes its own x-envoy-auth-partial-body into the CheckRequest (here "false": the
    # whole body was buffered), over the client's "true" — but would forward the client's header
    # to the upstream untouched. Only extauthz may trust the flag: the allow response removes the
    # client's copy so no upstream can be misled by it.
    signed = Signed(stack, extra=[("x-envoy-auth-partial-body", "true")])
    seen, _ = _upstream(signed.send())
    assert seen["x-auth-key-id"] == ACME
    assert "x-envoy-auth-partial-body" not in seen


def test_body_over_the_limit_on_a_no_partial_route_is_413_from_envoy(stack: BodyStack) -> None:
    # Per-route `with_request_body` with allow_partial_message: false: Envoy refuses the body
    # itself (no problem+json: extauthz is never asked).
    r = Signed(stack, target=STRICT, body=b"s" * (MAX_REQUEST_BYTES + 1)).send()
    assert r.status == 413, r.text
    assert r.header("content-type") != "application/problem+json"
    seen, _ = _upstream(Signed(stack, target=STRICT, body=b"s" * MAX_REQUEST_BYTES).send())
    assert seen["x-auth-key-id"] == ACME


# -- denied: the signature -------------------------------------------------------------------------


def test_no_signature_is_401_with_the_challenge(stack: BodyStack) -> None:
    r = stack.send("POST", WEBHOOKS, [("Content-Type", JSON)], b"{}")
    assert_denied(r, 401, "missing_credential")
    assert r.header_values("www-authenticate") == [CHALLENGE]


def test_target_uri_covers_authority_path_and_query(stack: BodyStack) -> None:
    # @target-uri = http://<authority><path>?<query> (scheme from Envoy: the listener is HTTP).
    components = ("@method", "@target-uri", "content-digest", "content-type")
    signed = Signed(stack, target=WEBHOOKS + "?page=1", components=components)
    assert _upstream(signed.send())[0]["x-auth-key-id"] == ACME


@pytest.mark.parametrize(
    "missing", ["content-type", "content-digest", "@query", "@authority", "@method"]
)
def test_signature_not_covering_a_required_component_is_401(stack: BodyStack, missing: str) -> None:
    signed = Signed(stack, components=[c for c in COMPONENTS if c != missing])
    r = signed.send()
    assert_denied(r, 401, "missing_component", challenge_contains=(CHALLENGE, INVALID))


def test_covered_header_absent_from_the_request_is_401_missing_component(
    stack: BodyStack,
) -> None:
    signed = Signed(stack, components=[*COMPONENTS, "x-tenant"], extra=[("X-Tenant", "t1")])
    fields = [(k, v) for k, v in signed.fields() if k != "X-Tenant"]
    assert_denied(signed.send(fields=fields), 401, "missing_component")


@pytest.mark.parametrize(
    ("created", "expires", "reason"),
    [
        (-200, None, "signature_expired"),  # older than max_age (60) + skew (30)
        (+120, None, "signature_not_yet_valid"),  # beyond the 30 s skew
        (-10, -40, "malformed_signature"),  # expires before created
        (-50, -45, "signature_expired"),  # expired 45 s ago (> 30 s skew)
    ],
)
def test_signature_outside_its_time_window_is_401(
    stack: BodyStack, created: int, expires: int | None, reason: str
) -> None:
    now = int(time.time())
    signed = Signed(
        stack, created=now + created, expires=None if expires is None else now + expires
    )
    assert_denied(signed.send(), 401, reason, challenge_contains=(INVALID,))


def test_replayed_nonce_is_401_replayed(stack: BodyStack) -> None:
    signed = Signed(stack)
    fields = signed.fields()
    assert _upstream(signed.send(fields=fields))[0]["x-auth-key-id"] == ACME
    r = signed.send(fields=fields)  # the very same request, again
    assert_denied(r, 401, "replayed", challenge_contains=(INVALID,))


def test_a_refused_request_does_not_burn_the_nonce(stack: BodyStack) -> None:
    # A tampered copy sent first (401) must not make the client's genuine request a "replay".
    signed = Signed(stack)
    fields = signed.fields()
    assert_denied(signed.send(fields=fields, body=b"tampered" + signed.body[8:]), 401,
                  "digest_mismatch")  # fmt: skip
    assert _upstream(signed.send(fields=fields))[0]["x-auth-key-id"] == ACME
    assert_denied(signed.send(fields=fields), 401, "replayed")


def test_nonce_is_per_key(stack: BodyStack) -> None:
    nonce = secrets.token_urlsafe(12)
    for key in (ACME, GLOBEX):
        assert _upstream(Signed(stack, key=key, nonce=nonce).send())[0]["x-auth-key-id"] == key


def test_wrong_secret_is_401_bad_signature(stack: BodyStack) -> None:
    r = Signed(stack, secret=SECRETS[KONG]).send()
    assert_denied(r, 401, "bad_signature", challenge_contains=(CHALLENGE, INVALID))


def test_unknown_key_id_is_401(stack: BodyStack) -> None:
    r = Signed(stack, key=KONG).send()  # a cavage key, unknown to the rfc9421 authenticator
    assert_denied(r, 401, "unknown_key", challenge_contains=(INVALID,))


def test_signature_for_another_route_is_401(stack: BodyStack) -> None:
    # Signed for /webhooks/orders, sent to /webhooks/refunds: @path differs.
    signed = Signed(stack, target="/webhooks/refunds", signed_target=WEBHOOKS)
    assert_denied(signed.send(), 401, "bad_signature")


def test_other_algorithm_is_401(stack: BodyStack) -> None:
    r = Signed(stack, alg="rsa-pss-sha512").send()
    assert_denied(r, 401, "disallowed_algorithm")


def test_signature_without_its_input_is_401_malformed(stack: BodyStack) -> None:
    signed = Signed(stack)
    fields = [(k, v) for k, v in signed.fields() if k != "Signature-Input"]
    assert_denied(signed.send(fields=fields), 401, "malformed_signature")


# -- the wire: what Envoy does to what the client signed -----------------------------------------


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/webhooks/a/../orders", "/webhooks/orders"),
        ("/webhooks/./orders", "/webhooks/orders"),
        ("/webhooks//orders", "/webhooks/orders"),
        ("/webhooks/x/%2e%2E/orders", "/webhooks/orders"),
        ("/webhooks/%7Euser/%7e%41%2d%5F%2E", "/webhooks/~user/~A-_."),
    ],
    ids=["dot-dot", "dot", "double-slash", "encoded-dot-dot", "pct-unreserved"],
)
def test_envoy_normalizes_the_path_before_extauthz_sees_it(
    stack: BodyStack, sent: str, forwarded: str
) -> None:
    # normalize_path (RFC 3986 §6.2.2: percent-encoded *unreserved* characters are decoded, then
    # dot-segments removed, also encoded ones) + merge_slashes: @path is the normalized path. A
    # client that signs the path it sent fails; one that signs the normalized path passes.
    r = Signed(stack, target=sent).send()
    assert_denied(r, 401, "bad_signature")
    r = Signed(stack, target=sent, signed_target=forwarded).send()
    assert _upstream(r)[0]["x-auth-key-id"] == ACME
    assert r.json()["path"] == forwarded  # what the upstream serves


@pytest.mark.parametrize(
    "target",
    [
        WEBHOOKS + "/caf%c3%a9",  # lowercase hex digits are not uppercased
        WEBHOOKS + "/a%20b%21%40%3D",  # reserved / other characters stay encoded
    ],
    ids=["pct-lowercase", "pct-reserved"],
)
def test_percent_encoding_in_the_path_reaches_extauthz_as_sent(
    stack: BodyStack, target: str
) -> None:
    # Only unreserved characters are decoded (above); every other escape reaches extauthz as the
    # client wrote it, so a signature over the path as sent verifies.
    seen, _ = _upstream(Signed(stack, target=target).send())
    assert seen["x-auth-key-id"] == ACME


@pytest.mark.parametrize("target", [WEBHOOKS + "/semi;param=1", WEBHOOKS + "/a%25%3B"],
                         ids=["semicolon", "pct-percent-and-semicolon"])
def test_ambiguous_escapes_reach_extauthz_as_sent_and_are_refused(
    stack: BodyStack, target: str
) -> None:
    # `;` (servlet path parameters) and `%25` (an encoded `%`) also reach extauthz as sent, and
    # extauthz refuses them by default (issue 12, docs/paths.md), signature or not.
    assert_denied(Signed(stack, target=target).send(), 400, "bad_request")


@pytest.mark.parametrize(
    "query",
    ["b=2&a=1&a=3", "q=%20x+y&empty=&flag", "x=%2F%3F%26", "utf8=%C3%A9&raw=~!$'()*,;:@/?"],
    ids=["order-and-repeats", "encodings", "encoded-delimiters", "sub-delims"],
)
def test_query_reaches_extauthz_byte_for_byte(stack: BodyStack, query: str) -> None:
    seen, _ = _upstream(Signed(stack, target=f"{WEBHOOKS}?{query}").send())
    assert seen["x-auth-key-id"] == ACME


def test_empty_query_and_no_query_are_the_same_at_query(stack: BodyStack) -> None:
    # RFC 9421 §2.2.7: "?" alone either way. Sent "/webhooks/orders?", signed as no query.
    signed = Signed(stack, target=WEBHOOKS + "?", signed_target=WEBHOOKS)
    assert _upstream(signed.send())[0]["x-auth-key-id"] == ACME


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("API.Example.COM", "lowercased by both sides"),
        ("api.example.com:80", "the default port is not part of @authority"),
        ("api.example.com:8443", "another port is"),
    ],
)
def test_authority_is_the_host_header_normalized(stack: BodyStack, host: str, why: str) -> None:
    seen, _ = _upstream(Signed(stack, host=host).send())
    assert seen["x-auth-key-id"] == ACME


def test_covered_host_field_is_the_authority(stack: BodyStack) -> None:
    # Envoy turns the HTTP/1.1 Host header into :authority; a covered `host` still verifies.
    signed = Signed(stack, components=[*COMPONENTS, "host"], host="api.example.com:8443")
    assert _upstream(signed.send())[0]["x-auth-key-id"] == ACME


@pytest.mark.parametrize("listener", ["main", "raw"])
def test_repeated_covered_header_does_not_verify(stack: BodyStack, listener: str) -> None:
    # RFC 9421 §2.1 joins field lines with ", "; Envoy joins them with "," (headers map) and
    # extauthz does the same for header_map. Send a covered field on one line.
    extra = [("X-Tenant", "t1"), ("X-Tenant", "t2")]
    signed = Signed(stack, components=[*COMPONENTS, "x-tenant"], extra=extra, listener=listener)
    assert_denied(signed.send(), 401, "bad_signature")
    one_line = Signed(stack, components=[*COMPONENTS, "x-tenant"], extra=[("X-Tenant", "t1,t2")],
                      listener=listener)  # fmt: skip
    assert _upstream(one_line.send())[0]["x-auth-key-id"] == ACME


def test_surrounding_whitespace_of_a_covered_field_is_ignored(stack: BodyStack) -> None:
    signed = Signed(stack, components=[*COMPONENTS, "x-tenant"], extra=[("X-Tenant", " a  b ")])
    assert _upstream(signed.send())[0]["x-auth-key-id"] == ACME


# -- draft-cavage (Kong / APISIX clients) ----------------------------------------------------------


def _cavage(
    stack: BodyStack,
    body: bytes,
    *,
    names: Sequence[str] = ("(request-target)", "date", "digest"),
    date: float | None = None,
    secret: bytes = SECRETS[KONG],
    target: str = CAVAGE,
    scheme: str = "Signature",
    key_param: str = "keyId",
    signed_body: bytes | None = None,
) -> Response:
    headers = [
        ("Date", formatdate(time.time() if date is None else date, usegmt=True)),
        ("Digest", legacy_digest(body if signed_body is None else signed_body)),
        ("Content-Type", JSON),
    ]
    message = Message("POST", stack.authority, target, headers)
    auth = cavage_authorization(
        message, names, key_id=KONG, secret=secret, scheme=scheme, key_param=key_param
    )
    return stack.send("POST", target, [*headers, ("Authorization", auth)], body)


def test_cavage_signature_is_allowed_and_stripped(stack: BodyStack) -> None:
    body = json.dumps({"event": "paid"}).encode()
    seen, _ = _upstream(_cavage(stack, body))
    assert seen["x-auth-subject"] == KONG
    assert seen["x-auth-method"] == "hmac"
    assert "authorization" not in seen
    assert "date" in seen  # only the credential is removed


def test_kong_hmac_scheme_with_request_line_is_allowed(stack: BodyStack) -> None:
    # Kong's hmac-auth: `Authorization: hmac username=...`, headers="date request-line". The
    # request line's version is Envoy's `protocol` attribute (HTTP/1.1 here).
    r = _cavage(stack, b"{}", names=("date", "request-line"), target=KONG_PATH, scheme="hmac",
                key_param="username")  # fmt: skip
    assert _upstream(r)[0]["x-auth-subject"] == KONG


def test_cavage_wrong_secret_is_401(stack: BodyStack) -> None:
    r = _cavage(stack, b"{}", secret=SECRETS[ACME])
    assert_denied(r, 401, "bad_signature", challenge_contains=(INVALID,))


def test_cavage_tampered_body_is_401_digest_mismatch(stack: BodyStack) -> None:
    r = _cavage(stack, b'{"amount": 900}', signed_body=b'{"amount": 100}')
    assert_denied(r, 401, "digest_mismatch")


def test_cavage_stale_date_is_401_expired(stack: BodyStack) -> None:
    r = _cavage(stack, b"{}", date=time.time() - 600)
    assert_denied(r, 401, "signature_expired")


def test_cavage_without_the_digest_is_401_missing_component(stack: BodyStack) -> None:
    r = _cavage(stack, b"{}", names=("(request-target)", "date"))
    assert_denied(r, 401, "missing_component")


def test_cavage_without_a_signed_date_is_401_missing_component(stack: BodyStack) -> None:
    r = _cavage(stack, b"{}", names=("(request-target)", "digest"))
    assert_denied(r, 401, "missing_component")


def test_cavage_no_credential_is_401_with_a_signature_challenge(stack: BodyStack) -> None:
    r = stack.send("POST", CAVAGE, [("Content-Type", JSON)], b"{}")
    assert_denied(r, 401, "missing_credential")
    (challenge,) = r.header_values("www-authenticate")
    assert challenge.startswith(f'Signature realm="{REALM}"'), challenge
