"""HMAC request signatures: RFC 9421 (Appendix B vectors, deny paths) and the cavage profile."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from extauthz import sfv
from extauthz.authn.digest import content_digest, legacy_digest
from extauthz.authn.hmac_sig import HmacAuthenticator, HmacKey, signature_base
from extauthz.authn.nonces import MemoryNonceStore
from extauthz.authn.reload_state import ReloadState
from extauthz.clock import FixedClock
from extauthz.config.loader import load_config
from extauthz.config.schema import AuthnSpec, HmacSpec
from extauthz.decision import GrpcCode, Outcome, from_error
from extauthz.errors import AuthenticationError, DependencyUnavailable, Reason
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from extauthz.types import AuthMethod, Headers, RequestView
from tests.support.builders import make_ctx

# ---------------------------------------------------------------------- RFC 9421 Appendix B

#: B.1.4 "test-shared-secret" (base64)
RFC_SECRET_B64 = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_SECRET = base64.b64decode(RFC_SECRET_B64)
CREATED = 1618884473
BODY = b'{"hello": "world"}'
RFC_HEADERS = {
    ":authority": "example.com",
    ":method": "POST",
    ":path": "/foo?param=Value&Pet=dog",
    ":scheme": "https",
    "date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "content-type": "application/json",
    "content-digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu"
    "7BNNyealdVLvRwEmTHWXvJwew==:",
    "content-length": "18",
}
B25_INPUT = (
    'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
)
B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
B25_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type");created=1618884473'
    ';keyid="test-shared-secret"'
)

KEY_ID = "test-shared-secret"
OTHER_SECRET = b"a-completely-different-secret-of-40-bytes"


def request(
    *,
    method: str = "POST",
    path: str = "/foo",
    query: str = "param=Value&Pet=dog",
    headers: dict[str, str] | None = None,
    body: bytes = BODY,
    scheme: str = "https",
    protocol: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
) -> RequestView:
    """The RFC 9421 B.2 test request, as Envoy would describe it (pseudo-headers included; a
    body comes with Envoy's ``x-envoy-auth-partial-body: false``, as with_request_body sends it)."""
    merged = {**RFC_HEADERS, ":method": method, ":path": path + (f"?{query}" if query else "")}
    if body:
        merged["x-envoy-auth-partial-body"] = "false"
        merged["content-length"] = str(len(body))
    merged.update(headers or {})
    for name in drop:
        merged.pop(name, None)
    return RequestView(
        method=method,
        host="example.com",
        path=path,
        raw_query=query,
        scheme=scheme,
        headers=Headers(merged),
        body=body,
        protocol=protocol,
    )


def swap_body(view: RequestView, body: bytes) -> RequestView:
    """``view`` with another (whole) body, as a tamperer on the wire would send it."""
    return with_headers(dataclasses.replace(view, body=body), content_length=str(len(body)))


def with_headers(view: RequestView, **extra: str) -> RequestView:
    merged = dict(view.headers.items())
    merged.update({k.replace("_", "-"): v for k, v in extra.items()})
    return dataclasses.replace(view, headers=Headers(merged))


def sign_view(
    view: RequestView,
    components: Sequence[str | sfv.Item],
    *,
    secret: bytes = RFC_SECRET,
    label: str = "sig1",
    keyid: str | None = KEY_ID,
    created: int | None = CREATED,
    **params: Any,
) -> RequestView:
    """Sign ``view`` (RFC 9421) and return it with Signature-Input / Signature headers."""
    items = [c if isinstance(c, sfv.Item) else sfv.Item(c) for c in components]
    sig_params: dict[str, Any] = {}
    if created is not None:
        sig_params["created"] = created
    if keyid is not None:
        sig_params["keyid"] = keyid
    sig_params.update(params)
    inner = sfv.InnerList(items, sig_params)
    mac = hmac.new(secret, signature_base(view, inner).encode(), hashlib.sha256).digest()
    return with_headers(
        view,
        signature_input=sfv.serialize_dictionary({label: inner}),
        signature=sfv.serialize_dictionary({label: sfv.Item(mac)}),
    )


def write_secret(tmp_path: Path, data: bytes, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return name


def make_auth(
    tmp_path: Path,
    clock: FixedClock | None = None,
    *,
    key_id: str = KEY_ID,
    reload_state: ReloadState | None = None,
    **spec: Any,
) -> HmacAuthenticator:
    write_secret(tmp_path, RFC_SECRET_B64.encode() + b"\n", "rfc.key")
    keys = spec.pop("keys", [{"id": key_id, "secret_file": "rfc.key",
                               "secret_encoding": "base64"}])
    parsed = HmacSpec.model_validate({"keys": keys, **spec})
    ctx = make_ctx(clock=clock or FixedClock(CREATED), base_dir=tmp_path)
    if reload_state is not None:
        ctx = dataclasses.replace(ctx, reload_state=reload_state)
    return HmacAuthenticator.from_spec("sig", parsed, ctx)


async def denied(auth: HmacAuthenticator, view: RequestView, reason: Reason) -> AuthenticationError:
    """Assert a 401 / UNAUTHENTICATED deny with ``reason``; returns the error."""
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(view)
    assert info.value.reason is reason, info.value.description
    decision = from_error(info.value, "r")
    assert decision.http_status == 401 and decision.grpc_code is GrpcCode.UNAUTHENTICATED
    return info.value


FULL = ["@method", "@authority", "@path", "@query", "content-type"]


# ---------------------------------------------------------------------- the RFC vector


def test_rfc9421_b25_signature_base_and_value_are_exact() -> None:
    inner = sfv.parse_dictionary(B25_INPUT)["sig-b25"]
    assert isinstance(inner, sfv.InnerList)
    base = signature_base(request(), inner)
    assert base == B25_BASE
    mac = hmac.new(RFC_SECRET, base.encode(), hashlib.sha256).digest()
    assert base64.b64encode(mac).decode() == "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="


async def test_rfc9421_b25_request_verifies(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, required_components=["@authority"])
    view = with_headers(request(), signature_input=B25_INPUT, signature=B25_SIGNATURE)
    identity = await auth.authenticate(view)
    assert identity is not None
    assert identity.method is AuthMethod.HMAC
    assert identity.subject == KEY_ID and identity.key_id == KEY_ID
    assert identity.claims["label"] == "sig-b25" and identity.claims["created"] == CREATED
    assert identity.headers == (("x-auth-key-id", KEY_ID),)


async def test_rfc9421_b25_fails_with_default_required_components(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)  # default: @method @authority @path @query
    view = with_headers(request(), signature_input=B25_INPUT, signature=B25_SIGNATURE)
    error = await denied(auth, view, Reason.MISSING_COMPONENT)
    assert "@method" in error.description and "@path" in error.description


async def test_rfc9421_b25_signature_base_with_all_derived_components() -> None:
    items = [sfv.Item(n) for n in ("@method", "@authority", "@scheme", "@target-uri",
                                   "@request-target", "@path", "@query")]
    base = signature_base(request(), sfv.InnerList(items, {"created": CREATED}))
    assert base.split("\n")[:7] == [
        '"@method": POST',
        '"@authority": example.com',
        '"@scheme": https',
        '"@target-uri": https://example.com/foo?param=Value&Pet=dog',
        '"@request-target": /foo?param=Value&Pet=dog',
        '"@path": /foo',
        '"@query": ?param=Value&Pet=dog',
    ]


# ---------------------------------------------------------------------- allow paths


async def test_fully_signed_request_allows(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    identity = await auth.authenticate(sign_view(request(), FULL))
    assert identity is not None and identity.subject == KEY_ID


async def test_absent_signature_is_no_credential(tmp_path: Path) -> None:
    assert await make_auth(tmp_path).authenticate(request()) is None


async def test_consumer_and_scopes_per_key(tmp_path: Path) -> None:
    write_secret(tmp_path, b"k" * 40, "k2")
    auth = make_auth(tmp_path, keys=[{"id": "k2", "secret_file": "k2", "consumer": "billing",
                                      "scopes": ["invoices:write"]}])
    identity = await auth.authenticate(sign_view(request(), FULL, secret=b"k" * 40, keyid="k2"))
    assert identity is not None
    assert identity.subject == "billing" and identity.consumer == "billing"
    assert identity.key_id == "k2" and identity.scopes == {"invoices:write"}


async def test_target_uri_satisfies_path_query_and_authority(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    assert await auth.authenticate(sign_view(request(), ["@method", "@target-uri"]))


async def test_request_target_satisfies_path_and_query(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    view = sign_view(request(), ["@method", "@authority", "@request-target"])
    assert await auth.authenticate(view)


async def test_authority_default_port_is_removed_and_host_falls_back(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    signed = sign_view(request(), FULL)  # signed for "example.com"
    assert await auth.authenticate(with_headers(signed, **{":authority": "Example.COM:443"}))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(with_headers(signed, **{":authority": "example.com:8443"}))
    # a covered "host" header is read from :authority (Envoy's form of Host)
    view = sign_view(request(), [*FULL, "host"])
    assert await auth.authenticate(view)


async def test_sf_and_key_parameters(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    view = request(headers={"content-digest": content_digest(BODY) + " ,  "
                            + content_digest(BODY, "sha-512")})
    components: list[str | sfv.Item] = [
        *FULL,
        sfv.Item("content-digest", {"sf": True}),
        sfv.Item("content-digest", {"key": "sha-256"}),
    ]
    signed = sign_view(view, components)
    base_lines = signature_base(signed, sfv.InnerList([sfv.Item("content-digest", {"sf": True})],
                                                      {})).split("\n")
    assert base_lines[0].startswith('"content-digest";sf: sha-256=:X48E9q')
    assert ", sha-512=:" in base_lines[0]
    assert await auth.authenticate(signed)


async def test_alg_parameter_hmac_sha256_accepted(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    assert await auth.authenticate(sign_view(request(), FULL, alg="hmac-sha256"))


async def test_signature_of_unknown_party_is_skipped_for_ours(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    ours = sign_view(request(), FULL, label="ours")
    foreign = sfv.InnerList([sfv.Item("@method")], {"keyid": "someone-else", "created": CREATED})
    view = with_headers(
        ours,
        signature_input=f"proxy={sfv.serialize_inner_list(foreign)}, "
        + ours.headers["signature-input"],
        signature="proxy=:AAAA:, " + ours.headers["signature"],
    )
    identity = await auth.authenticate(view)
    assert identity is not None and identity.claims["label"] == "ours"


async def test_configured_label_and_tag(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, label="app", tag="orders-api")
    assert await auth.authenticate(sign_view(request(), FULL, label="app", tag="orders-api"))
    await denied(auth, sign_view(request(), FULL, label="other", tag="orders-api"),
                 Reason.MALFORMED_SIGNATURE)
    await denied(auth, sign_view(request(), FULL, label="app", tag="other"),
                 Reason.MALFORMED_SIGNATURE)


# ---------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "tamper",
    [
        {"method": "PUT"},
        {"path": "/admin"},
        {"query": "param=Value&Pet=cat"},
        {"query": ""},
        {"headers": {":authority": "evil.example"}},
        {"headers": {"content-type": "text/plain"}},
    ],
    ids=["method", "path", "query", "query-removed", "authority", "header"],
)
async def test_attack_tampered_request_is_refused(tmp_path: Path, tamper: dict[str, Any]) -> None:
    auth = make_auth(tmp_path)
    signed = sign_view(request(), FULL)
    tampered = request(**tamper)
    tampered = with_headers(tampered, signature_input=signed.headers["signature-input"],
                            signature=signed.headers["signature"])
    await denied(auth, tampered, Reason.BAD_SIGNATURE)


async def test_attack_wrong_secret(tmp_path: Path) -> None:
    await denied(make_auth(tmp_path), sign_view(request(), FULL, secret=OTHER_SECRET),
                 Reason.BAD_SIGNATURE)


async def test_attack_tampered_signature_params(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, max_age_seconds=60)
    signed = sign_view(request(), FULL)
    stretched = signed.headers["signature-input"].replace(
        f"created={CREATED}", f"created={CREATED + 30}")
    await denied(auth, with_headers(signed, signature_input=stretched), Reason.BAD_SIGNATURE)


# ---------------------------------------------------------------------- components


async def test_missing_required_component(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, required_components=["@method", "@path", "x-tenant"])
    error = await denied(auth, sign_view(request(), ["@method", "@path"]),
                         Reason.MISSING_COMPONENT)
    assert error.description == "signature must cover x-tenant"


async def test_attack_covered_header_removed_from_request_is_not_skipped(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    signed = sign_view(request(headers={"x-tenant": "a"}), [*FULL, "x-tenant"])
    stripped = dataclasses.replace(signed, headers=Headers(
        {k: v for k, v in signed.headers.items() if k != "x-tenant"}))
    error = await denied(auth, stripped, Reason.MISSING_COMPONENT)
    assert "x-tenant" in error.description


@pytest.mark.parametrize(
    "signature_input",
    [
        'sig1=("@method" "@method");created=1618884473;keyid="test-shared-secret"',
        'sig1=(@method);created=1618884473;keyid="test-shared-secret"',
        'sig1=("Content-Type");created=1618884473;keyid="test-shared-secret"',
        'sig1=("@query-param";name="x");created=1618884473;keyid="test-shared-secret"',
        'sig1=("@status");created=1618884473;keyid="test-shared-secret"',
        'sig1=("date";req);created=1618884473;keyid="test-shared-secret"',
        'sig1=("date";tr);created=1618884473;keyid="test-shared-secret"',
        'sig1=("date";bs;sf);created=1618884473;keyid="test-shared-secret"',
        'sig1=("date";sf);created=1618884473;keyid="test-shared-secret"',
        'sig1=("@method");created=1618884473.5;keyid="test-shared-secret"',
        'sig1=("@method");created="1618884473";keyid="test-shared-secret"',
        'sig1=("@method");created=1618884473;keyid=test',
        'sig1=("@method");created=1618884473',
        'sig1="not a list";created=1618884473;keyid="test-shared-secret"',
        'sig1=("@method");created=1618884473;keyid="test-shared-secret";nonce=""',
        "sig1=(",
    ],
)
async def test_malformed_signature_input(tmp_path: Path, signature_input: str) -> None:
    auth = make_auth(tmp_path, required_components=[])
    view = with_headers(request(), signature_input=signature_input, signature="sig1=:AAAA:")
    await denied(auth, view, Reason.MALFORMED_SIGNATURE)


@pytest.mark.parametrize("signature", ["sig1=AAAA", 'sig1="AAAA"', "other=:AAAA:", "sig1=:A!:"])
async def test_malformed_signature_header(tmp_path: Path, signature: str) -> None:
    auth = make_auth(tmp_path, required_components=[])
    signed = sign_view(request(), ["@method"])
    await denied(auth, with_headers(signed, signature=signature), Reason.MALFORMED_SIGNATURE)


async def test_one_of_the_two_headers_alone_is_malformed(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    signed = sign_view(request(), FULL)
    only_input = dataclasses.replace(signed, headers=Headers(
        {k: v for k, v in signed.headers.items() if k != "signature"}))
    await denied(auth, only_input, Reason.MALFORMED_SIGNATURE)


async def test_oversized_header_refused_before_parsing(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    view = with_headers(request(), signature_input="a" * 10_000, signature="sig1=:AAAA:")
    await denied(auth, view, Reason.MALFORMED_SIGNATURE)


# ---------------------------------------------------------------------- keys and algorithms


async def test_unknown_key_id(tmp_path: Path) -> None:
    await denied(make_auth(tmp_path), sign_view(request(), FULL, keyid="nobody"),
                 Reason.UNKNOWN_KEY)


@pytest.mark.parametrize("alg", ["hmac-sha512", "rsa-pss-sha512", "ed25519", "HMAC-SHA256"])
async def test_attack_algorithm_other_than_hmac_sha256(tmp_path: Path, alg: str) -> None:
    await denied(make_auth(tmp_path), sign_view(request(), FULL, alg=alg),
                 Reason.DISALLOWED_ALGORITHM)


# ---------------------------------------------------------------------- time


async def test_created_required_by_default(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    error = await denied(auth, sign_view(request(), FULL, created=None), Reason.MALFORMED_SIGNATURE)
    assert "created" in error.description


async def test_expired_after_skew(tmp_path: Path) -> None:
    clock = FixedClock(CREATED + 300)
    auth = make_auth(tmp_path, clock, max_skew_seconds=300)
    view = sign_view(request(), FULL)
    assert await auth.authenticate(view)
    clock.advance(1)
    await denied(auth, view, Reason.SIGNATURE_EXPIRED)


async def test_max_age_extends_the_window(tmp_path: Path) -> None:
    clock = FixedClock(CREATED + 65)
    auth = make_auth(tmp_path, clock, max_skew_seconds=5, max_age_seconds=60)
    view = sign_view(request(), FULL)
    assert await auth.authenticate(view)
    clock.advance(1)
    await denied(auth, view, Reason.SIGNATURE_EXPIRED)


async def test_created_in_the_future(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, FixedClock(CREATED), max_skew_seconds=10)
    assert await auth.authenticate(sign_view(request(), FULL, created=CREATED + 10))
    await denied(auth, sign_view(request(), FULL, created=CREATED + 11),
                 Reason.SIGNATURE_NOT_YET_VALID)


async def test_expires_is_honoured(tmp_path: Path) -> None:
    clock = FixedClock(CREATED + 20)
    auth = make_auth(tmp_path, clock, max_skew_seconds=5, max_age_seconds=600)
    view = sign_view(request(), FULL, expires=CREATED + 15)
    assert await auth.authenticate(view)
    clock.advance(1)
    await denied(auth, view, Reason.SIGNATURE_EXPIRED)
    await denied(auth, sign_view(request(), FULL, expires=CREATED - 1), Reason.MALFORMED_SIGNATURE)


async def test_without_created_expires_is_required_and_bounded(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_created=False, max_skew_seconds=10, max_age_seconds=60)
    assert await auth.authenticate(sign_view(request(), FULL, created=None, expires=CREATED + 60))
    await denied(auth, sign_view(request(), FULL, created=None), Reason.MALFORMED_SIGNATURE)
    error = await denied(auth, sign_view(request(), FULL, created=None, expires=CREATED + 3600),
                         Reason.MALFORMED_SIGNATURE)
    assert "lifetime" in error.description


# ---------------------------------------------------------------------- nonces


async def test_attack_replayed_nonce(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    view = sign_view(request(), FULL, nonce="n-1")
    assert await auth.authenticate(view)
    await denied(auth, view, Reason.REPLAYED)
    assert await auth.authenticate(sign_view(request(), FULL, nonce="n-2"))


async def test_nonce_is_not_burned_by_an_invalid_request(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    forged = sign_view(request(), FULL, nonce="n-1", secret=OTHER_SECRET)
    await denied(auth, forged, Reason.BAD_SIGNATURE)
    assert await auth.authenticate(sign_view(request(), FULL, nonce="n-1"))


async def test_nonce_expires_with_the_signature_window(tmp_path: Path) -> None:
    clock = FixedClock(CREATED)
    auth = make_auth(tmp_path, clock, max_skew_seconds=10)
    assert await auth.authenticate(sign_view(request(), FULL, nonce="n"))
    assert len(auth._nonces) == 1  # type: ignore[arg-type]
    clock.advance(11)  # window over: the old signature is refused as expired, not as a replay
    await denied(auth, sign_view(request(), FULL, nonce="n"), Reason.SIGNATURE_EXPIRED)


async def test_require_nonce(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_nonce=True)
    await denied(auth, sign_view(request(), FULL), Reason.MALFORMED_SIGNATURE)
    assert await auth.authenticate(sign_view(request(), FULL, nonce="abc"))


async def test_full_nonce_store_fails_closed_with_503(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, nonce_cache_size=1)
    assert await auth.authenticate(sign_view(request(), FULL, nonce="a"))
    with pytest.raises(DependencyUnavailable) as info:
        await auth.authenticate(sign_view(request(), FULL, nonce="b"))
    decision = from_error(info.value, "r")
    assert decision.http_status == 503 and decision.grpc_code is GrpcCode.UNAVAILABLE


async def test_replay_cache_survives_a_reload(tmp_path: Path) -> None:
    carried = ReloadState()  # the process's: both configurations are built with it
    old = make_auth(tmp_path, reload_state=carried)
    view = sign_view(request(), FULL, nonce="n-1")
    assert await old.authenticate(view)
    new = make_auth(tmp_path, reload_state=carried)
    await new.start()
    await old.close()  # the previous snapshot closes after the swap
    await denied(new, view, Reason.REPLAYED)


async def test_replay_cache_is_not_shared_without_a_common_reload_state(tmp_path: Path) -> None:
    old = make_auth(tmp_path)
    view = sign_view(request(), FULL, nonce="n-1")
    assert await old.authenticate(view)
    assert await make_auth(tmp_path).authenticate(view)  # separate compiles share nothing


# ---------------------------------------------------------------------- body digests


async def test_require_digest_allows_matching_body(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    view = request(headers={"content-digest": content_digest(BODY)})
    assert await auth.authenticate(sign_view(view, [*FULL, "content-digest"]))


async def test_require_digest_needs_it_covered(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    view = request(headers={"content-digest": content_digest(BODY)})
    error = await denied(auth, sign_view(view, FULL), Reason.MISSING_COMPONENT)
    assert "content-digest" in error.description


async def test_attack_body_swapped_under_signed_digest(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)  # digest not required, but covered: it must hold
    signed = sign_view(request(headers={"content-digest": content_digest(BODY)}),
                       [*FULL, "content-digest"])
    swapped = swap_body(signed, b'{"hello": "mallory"}')
    error = await denied(auth, swapped, Reason.DIGEST_MISMATCH)
    assert error.description == "content digest mismatch"


async def test_attack_body_swapped_under_one_signed_digest_member(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    signed = sign_view(request(headers={"content-digest": content_digest(BODY)}),
                       [*FULL, sfv.Item("content-digest", {"key": "sha-256"})])
    swapped = swap_body(signed, b"evil")
    await denied(auth, swapped, Reason.DIGEST_MISMATCH)


async def test_attack_truncated_body_never_satisfies_a_digest(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    view = request(headers={"content-digest": content_digest(BODY),
                            "x-envoy-auth-partial-body": "true"})
    error = await denied(auth, sign_view(view, [*FULL, "content-digest"]), Reason.BODY_TRUNCATED)
    assert error.description == "body truncated"


async def test_digest_algorithms_restriction(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True, digest_algorithms=["sha-512"])
    view = request(headers={"content-digest": content_digest(BODY)})  # sha-256 only
    error = await denied(auth, sign_view(view, [*FULL, "content-digest"]), Reason.DIGEST_MISMATCH)
    assert "no accepted" in error.description


# ---------------------------------------------------------------------- challenge and headers


def test_challenge_lists_required_components(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    assert auth.challenge() == (
        'Signature realm="extauthz", headers="@method @authority @path @query content-digest"')
    error = AuthenticationError(Reason.BAD_SIGNATURE, "signature verification failed")
    assert auth.challenge(error).endswith(
        'error="invalid_signature", error_description="signature verification failed"')
    assert auth.credential_headers() == ("signature", "signature-input")


# ---------------------------------------------------------------------- configuration


def test_inline_secret_refused_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="inline secrets are refused"):
        HmacSpec.model_validate({"keys": [{"id": "k", "secret": "hunter2"}]})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"keys": [{"id": "k"}]}, "exactly one of secret_file, secret_env"),
        ({"keys": [{"id": "k", "secret_file": "a", "secret_env": "B"}]}, "exactly one"),
        ({"keys": [{"id": "k", "secret_env": "1BAD"}]}, "not an environment variable"),
        ({"keys": [{"id": "k k", "secret_env": "A"}]}, "pattern"),
        ({"keys": [{"id": "k", "secret_env": "A"}, {"id": "k", "secret_env": "B"}]},
         "duplicate key id"),
        ({"keys": [{"id": "k", "secret_env": "A"}], "required_components": ["@status"]},
         "unsupported derived component"),
        ({"keys": [{"id": "k", "secret_env": "A"}], "required_components": ["bad header"]},
         "not a valid HTTP header name"),
        ({"keys": [{"id": "k", "secret_env": "A"}], "profile": "cavage", "require_nonce": True},
         "rfc9421 only"),
        ({"keys": [{"id": "k", "secret_env": "A"}], "profile": "cavage",
          "required_components": ["@scheme"]}, "@scheme"),
        ({"keys": [{"id": "k", "secret_env": "A"}], "dialect": "apisix"}, "cavage only"),
        ({"keys": []}, "at least 1"),
    ],
)
def test_schema_refuses(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HmacSpec.model_validate(spec)


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMAC_K1", "e" * 32)
    spec = HmacSpec.model_validate({"keys": [{"id": "k1", "secret_env": "HMAC_K1"}]})
    auth = HmacAuthenticator.from_spec("s", spec, make_ctx(base_dir=tmp_path))
    assert auth._keys["k1"].secret == b"e" * 32
    assert "eeee" not in repr(auth._keys["k1"])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ({"id": "k1", "secret_env": "HMAC_UNSET_VAR"}, "keys[0] (k1): environment variable "
                                                       "HMAC_UNSET_VAR is not set"),
        ({"id": "k1", "secret_file": "nope"}, "keys[0] (k1): secret file"),
        ({"id": "k1", "secret_file": "short"}, "shorter than min_secret_bytes (32)"),
        ({"id": "k1", "secret_file": "short", "secret_encoding": "hex"}, "is not valid hex"),
    ],
)
def test_unusable_secrets_are_config_errors(tmp_path: Path, key: dict[str, Any],
                                            message: str) -> None:
    write_secret(tmp_path, b"tooshort\n", "short")
    spec = HmacSpec.model_validate({"keys": [key]})
    with pytest.raises(ValueError) as info:
        HmacAuthenticator.from_spec("s", spec, make_ctx(base_dir=tmp_path))
    assert message in str(info.value)
    assert "tooshort" not in str(info.value)


def test_authn_spec_accepts_the_hmac_kind() -> None:
    spec = AuthnSpec.model_validate({"hmac": {"keys": [{"id": "k", "secret_env": "X"}]}})
    assert spec.kind == "hmac"


# ---------------------------------------------------------------------- through the pipeline

PIPELINE_CONFIG = """
authenticators:
  partners:
    hmac:
      keys:
      - {id: test-shared-secret, secret_file: rfc.key, secret_encoding: base64, consumer: acme}
      require_digest: true
routes:
- name: orders
  match: {prefix: /foo}
  authn: [partners]
"""


async def test_pipeline_allow_and_deny(tmp_path: Path) -> None:
    (tmp_path / "rfc.key").write_text(RFC_SECRET_B64 + "\n")
    (tmp_path / "c.yaml").write_text(PIPELINE_CONFIG)
    snapshot = compile_config(load_config(tmp_path / "c.yaml"), Metrics(),
                              clock=FixedClock(CREATED),
                              registry={"hmac": HmacAuthenticator.from_spec})
    engine = Engine(Metrics(), snapshot)
    view = request(headers={"content-digest": content_digest(BODY), "x-auth-key-id": "spoof"})
    signed = sign_view(view, [*FULL, "content-digest"])
    allowed = await engine.check(signed)
    assert allowed.outcome is Outcome.ALLOW and allowed.grpc_code is GrpcCode.OK
    upstream = dict(allowed.upstream_headers)
    assert upstream["x-auth-subject"] == "acme" and upstream["x-auth-method"] == "hmac"
    assert upstream["x-auth-key-id"] == KEY_ID
    assert {"signature", "signature-input"} <= set(allowed.remove_headers)

    denied_ = await engine.check(swap_body(signed, b"other"))
    assert denied_.http_status == 401 and denied_.grpc_code is GrpcCode.UNAUTHENTICATED
    assert denied_.reason is Reason.DIGEST_MISMATCH
    challenge = dict(denied_.response_headers)["www-authenticate"]
    assert challenge.startswith('Signature realm="extauthz"') and "invalid_signature" in challenge

    missing = await engine.check(request())
    assert missing.http_status == 401 and missing.reason is Reason.MISSING_CREDENTIAL
    await snapshot.close()


# ---------------------------------------------------------------------- cavage profile

CAVAGE_SECRET = b"cavage-shared-secret-with-32-bytes!!"
DATE = "Tue, 20 Apr 2021 02:07:55 GMT"  # == CREATED + 2
DATE_TS = CREATED + 2


def cavage_auth(tmp_path: Path, clock: FixedClock | None = None, **spec: Any) -> HmacAuthenticator:
    write_secret(tmp_path, CAVAGE_SECRET, "cavage.key")
    spec.setdefault("required_components", ["@request-target"])
    parsed = HmacSpec.model_validate({
        "profile": "cavage",
        "keys": [{"id": "client-1", "secret_file": "cavage.key", "consumer": "legacy"}],
        **spec,
    })
    return HmacAuthenticator.from_spec(
        "legacy", parsed, make_ctx(clock=clock or FixedClock(CREATED), base_dir=tmp_path))


def b64mac(text: str, secret: bytes = CAVAGE_SECRET) -> str:
    return base64.b64encode(hmac.new(secret, text.encode(), hashlib.sha256).digest()).decode()


def cavage_view(authorization: str | None = None, **headers: str) -> RequestView:
    extra = {"date": DATE, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if authorization is not None:
        extra["authorization"] = authorization
    return request(method="GET", path="/foo", query="a=1", headers=extra, body=b"")


def draft_header(headers: str, signing_string: str, *, key: str = "client-1",
                 algorithm: str = "hmac-sha256", secret: bytes = CAVAGE_SECRET) -> str:
    return (f'Signature keyId="{key}",algorithm="{algorithm}",headers="{headers}",'
            f'signature="{b64mac(signing_string, secret)}"')


async def test_cavage_draft_allows(tmp_path: Path) -> None:
    signing = f"(request-target): get /foo?a=1\nhost: example.com\ndate: {DATE}"
    view = cavage_view(draft_header("(request-target) host date", signing))
    identity = await cavage_auth(tmp_path).authenticate(view)
    assert identity is not None and identity.subject == "legacy" and identity.key_id == "client-1"
    assert identity.claims["created"] == DATE_TS


async def test_cavage_signature_header_form(tmp_path: Path) -> None:
    signing = f"(request-target): get /foo?a=1\ndate: {DATE}"
    params = draft_header("(request-target) date", signing).removeprefix("Signature ")
    assert await cavage_auth(tmp_path).authenticate(cavage_view(signature=params))


async def test_cavage_apisix_dialect(tmp_path: Path) -> None:
    signing = f"client-1\nGET /foo?a=1\ndate: {DATE}\n"
    view = cavage_view(draft_header("@request-target date", signing))
    assert await cavage_auth(tmp_path, dialect="apisix").authenticate(view)
    # the same signature is not valid in the draft dialect
    await denied(cavage_auth(tmp_path), view, Reason.BAD_SIGNATURE)


async def test_cavage_kong_style(tmp_path: Path) -> None:
    signing = f"date: {DATE}\nGET /foo?a=1 HTTP/1.1"
    header = (f'hmac username="client-1", algorithm="hmac-sha256", headers="date request-line", '
              f'signature="{b64mac(signing)}"')
    assert await cavage_auth(tmp_path).authenticate(cavage_view(header))


async def test_cavage_created_and_expires_pseudo_headers(tmp_path: Path) -> None:
    clock = FixedClock(CREATED)
    auth = cavage_auth(tmp_path, clock, max_skew_seconds=5)
    signing = f"(request-target): get /foo?a=1\n(created): {CREATED}\n(expires): {CREATED + 10}"
    header = (f'Signature keyId="client-1",algorithm="hs2019",created={CREATED},'
              f'expires={CREATED + 10},headers="(request-target) (created) (expires)",'
              f'signature="{b64mac(signing)}"')
    view = cavage_view(header)
    assert await auth.authenticate(view)
    clock.advance(16)
    await denied(auth, view, Reason.SIGNATURE_EXPIRED)


async def test_cavage_legacy_digest_checked_when_covered(tmp_path: Path) -> None:
    auth = cavage_auth(tmp_path, require_digest=True)
    body = b'{"amount": 10}'
    digest = legacy_digest(body)
    signing = f"(request-target): post /foo\ndate: {DATE}\ndigest: {digest}"
    header = draft_header("(request-target) date digest", signing)
    view = request(method="POST", query="", body=body,
                   headers={"date": DATE, "digest": digest, "authorization": header})
    assert await auth.authenticate(view)
    await denied(auth, swap_body(view, b'{"amount": 10000}'),
                 Reason.DIGEST_MISMATCH)


async def test_attack_cavage_digest_not_covered(tmp_path: Path) -> None:
    """APISIX checks Digest without it being signed; here a required digest must be signed."""
    auth = cavage_auth(tmp_path, require_digest=True)
    body = b"x"
    signing = f"(request-target): post /foo\ndate: {DATE}"
    view = request(method="POST", query="", body=body, headers={
        "date": DATE, "digest": legacy_digest(body),
        "authorization": draft_header("(request-target) date", signing)})
    await denied(auth, view, Reason.MISSING_COMPONENT)


async def test_attack_cavage_listed_header_missing_is_not_skipped(tmp_path: Path) -> None:
    """Kong/APISIX sign an empty line (or skip it) for an absent header; we refuse."""
    signing = f"(request-target): get /foo?a=1\ndate: {DATE}\nx-tenant:"
    view = cavage_view(draft_header("(request-target) date x-tenant", signing))
    await denied(cavage_auth(tmp_path), view, Reason.MISSING_COMPONENT)


async def test_attack_cavage_unsigned_date_does_not_count(tmp_path: Path) -> None:
    """The skew check must use a signed time: an unsigned Date would make any capture eternal."""
    signing = "(request-target): get /foo?a=1"
    view = cavage_view(draft_header("(request-target)", signing))
    error = await denied(cavage_auth(tmp_path), view, Reason.MISSING_COMPONENT)
    assert "date" in error.description


async def test_cavage_date_skew(tmp_path: Path) -> None:
    signing = f"(request-target): get /foo?a=1\ndate: {DATE}"
    view = cavage_view(draft_header("(request-target) date", signing))
    await denied(cavage_auth(tmp_path, FixedClock(DATE_TS + 301)), view, Reason.SIGNATURE_EXPIRED)
    await denied(cavage_auth(tmp_path, FixedClock(DATE_TS - 301)), view,
                 Reason.SIGNATURE_NOT_YET_VALID)


async def test_cavage_x_date(tmp_path: Path) -> None:
    signing = f"(request-target): get /foo?a=1\nx-date: {DATE}"
    view = cavage_view(draft_header("(request-target) x-date", signing), x_date=DATE)
    assert await cavage_auth(tmp_path).authenticate(view)


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha512", "rsa-sha256"])
async def test_attack_cavage_algorithm_pinned(tmp_path: Path, algorithm: str) -> None:
    signing = f"(request-target): get /foo?a=1\ndate: {DATE}"
    view = cavage_view(draft_header("(request-target) date", signing, algorithm=algorithm))
    await denied(cavage_auth(tmp_path), view, Reason.DISALLOWED_ALGORITHM)


async def test_cavage_deny_paths(tmp_path: Path) -> None:
    auth = cavage_auth(tmp_path)
    signing = f"(request-target): get /foo?a=1\ndate: {DATE}"
    await denied(auth, cavage_view(draft_header("(request-target) date", signing,
                                                secret=b"x" * 32)), Reason.BAD_SIGNATURE)
    await denied(auth, cavage_view(draft_header("(request-target) date", signing, key="nobody")),
                 Reason.UNKNOWN_KEY)
    await denied(auth, cavage_view(draft_header("date", f"date: {DATE}")),
                 Reason.MISSING_COMPONENT)
    no_headers = f'Signature keyId="client-1",signature="{b64mac(signing)}"'
    await denied(auth, cavage_view(no_headers), Reason.MALFORMED_SIGNATURE)
    await denied(auth, cavage_view('Signature keyId="client-1",keyId="x"'),
                 Reason.MALFORMED_SIGNATURE)
    await denied(auth, cavage_view('Signature keyId="client-1" junk'), Reason.MALFORMED_SIGNATURE)
    tampered = cavage_view(draft_header("(request-target) date", signing))
    await denied(auth, dataclasses.replace(tampered, path="/bar"), Reason.BAD_SIGNATURE)


async def test_cavage_other_authorization_scheme_is_absent(tmp_path: Path) -> None:
    assert await cavage_auth(tmp_path).authenticate(cavage_view("Bearer abc")) is None
    assert await cavage_auth(tmp_path).authenticate(cavage_view()) is None


def test_cavage_challenge_and_credentials(tmp_path: Path) -> None:
    auth = cavage_auth(tmp_path)
    assert auth.challenge() == 'Signature realm="extauthz", headers="@request-target"'
    assert auth.credential_headers() == ("authorization", "signature")


# ---------------------------------------------------------------------- robustness (properties)

_sig_text = st.one_of(
    st.text(max_size=120),
    st.text(st.sampled_from([*'sig1=(")@;:, abcdefkynonce0123456789*?-', "\t"]), max_size=120),
)


def _direct(profile: str) -> HmacAuthenticator:
    spec = HmacSpec.model_validate({"profile": profile, "required_components": [],
                                    "keys": [{"id": KEY_ID, "secret_env": "UNUSED"}]})
    clock = FixedClock(CREATED)
    return HmacAuthenticator("p", spec, {KEY_ID: HmacKey(KEY_ID, RFC_SECRET)}, clock=clock,
                             nonces=MemoryNonceStore(clock))


_RFC9421 = _direct("rfc9421")
_CAVAGE = _direct("cavage")


@settings(max_examples=300, deadline=None)
@given(_sig_text, _sig_text)
def test_any_signature_headers_are_refused_cleanly(signature_input: str, signature: str) -> None:
    """Whatever arrives, the verifier answers None or AuthenticationError — never crashes."""
    view = with_headers(request(), signature_input=signature_input, signature=signature)
    try:
        result = asyncio.run(_RFC9421.authenticate(view))
    except AuthenticationError:
        return
    assert result is None


@settings(max_examples=300, deadline=None)
@given(_sig_text)
def test_any_cavage_authorization_is_refused_cleanly(params: str) -> None:
    view = cavage_view(f"Signature {params}")
    try:
        result = asyncio.run(_CAVAGE.authenticate(view))
    except AuthenticationError:
        return
    assert result is None


# ---------------------------------------------------------------------- body never received whole
# A covered digest of the empty body must not pass when Envoy forwarded no body (finding 14.1).

EMPTY_DIGEST = content_digest(b"")


@pytest.mark.parametrize(
    ("framing", "reason"),
    [
        ({"content-length": "42"}, Reason.BODY_NOT_FORWARDED),  # with_request_body off
        ({}, Reason.BODY_NOT_FORWARDED),  # chunked, not buffered: no trace but the method
        ({"transfer-encoding": "chunked"}, Reason.BODY_NOT_FORWARDED),
        ({"x-envoy-auth-partial-body": "true", "content-length": "9000"}, Reason.BODY_TRUNCATED),
        ({"x-envoy-auth-partial-body": "false", "content-length": "42"}, Reason.BODY_NOT_FORWARDED),
        ({"x-envoy-auth-partial-body": "false"}, Reason.BODY_NOT_FORWARDED),
    ],
)
async def test_attack_empty_body_digest_for_a_body_never_received(
    tmp_path: Path, framing: dict[str, str], reason: Reason
) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    view = request(body=b"", headers={"content-digest": EMPTY_DIGEST}, drop=("content-length",))
    view = with_headers(view, **{k.replace("-", "_"): v for k, v in framing.items()})
    await denied(auth, sign_view(view, [*FULL, "content-digest"]), reason)


async def test_declared_empty_body_passes_the_empty_digest(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, require_digest=True)
    view = request(body=b"", headers={"content-digest": EMPTY_DIGEST, "content-length": "0"})
    assert await auth.authenticate(sign_view(view, [*FULL, "content-digest"]))


@pytest.mark.parametrize(
    ("framing", "reason"),
    [
        ({"content-length": "42"}, Reason.BODY_NOT_FORWARDED),
        ({}, Reason.BODY_NOT_FORWARDED),
        ({"x-envoy-auth-partial-body": "true", "content-length": "9000"}, Reason.BODY_TRUNCATED),
    ],
)
async def test_attack_cavage_empty_body_digest_for_a_body_never_received(
    tmp_path: Path, framing: dict[str, str], reason: Reason
) -> None:
    auth = cavage_auth(tmp_path, require_digest=True)
    digest = legacy_digest(b"")
    signing = f"(request-target): post /foo\ndate: {DATE}\ndigest: {digest}"
    view = request(method="POST", query="", body=b"", drop=("content-length",), headers={
        "date": DATE, "digest": digest, **framing,
        "authorization": draft_header("(request-target) date digest", signing)})
    await denied(auth, view, reason)


async def test_body_not_forwarded_is_401_unauthenticated_over_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "rfc.key").write_text(RFC_SECRET_B64 + "\n")
    (tmp_path / "c.yaml").write_text(PIPELINE_CONFIG)
    snapshot = compile_config(load_config(tmp_path / "c.yaml"), Metrics(),
                              clock=FixedClock(CREATED),
                              registry={"hmac": HmacAuthenticator.from_spec})
    engine = Engine(Metrics(), snapshot)
    view = request(body=b"", headers={"content-digest": EMPTY_DIGEST, "content-length": "42"})
    decision = await engine.check(sign_view(view, [*FULL, "content-digest"]))
    assert decision.http_status == 401 and decision.grpc_code is GrpcCode.UNAUTHENTICATED
    assert decision.reason is Reason.BODY_NOT_FORWARDED
    truncated = with_headers(view, x_envoy_auth_partial_body="true")
    decision = await engine.check(sign_view(truncated, [*FULL, "content-digest"]))
    assert decision.http_status == 401 and decision.grpc_code is GrpcCode.UNAUTHENTICATED
    assert decision.reason is Reason.BODY_TRUNCATED
    await snapshot.close()


# ---------------------------------------------------------------------- RFC 9421 tag selection


def _two_signatures(view: RequestView, first_tag: str, second_tag: str) -> RequestView:
    """Two signatures by our key: ``one`` (tag ``first_tag``, a garbage MAC) then ``two``
    (tag ``second_tag``, valid)."""
    items = [sfv.Item(c) for c in FULL]
    one = sfv.InnerList(items, {"created": CREATED, "keyid": KEY_ID, "tag": first_tag})
    two = sfv.InnerList(items, {"created": CREATED, "keyid": KEY_ID, "tag": second_tag})
    mac = hmac.new(RFC_SECRET, signature_base(view, two).encode(), hashlib.sha256).digest()
    return with_headers(
        view,
        signature_input=sfv.serialize_dictionary({"one": one, "two": two}),
        signature=sfv.serialize_dictionary({"one": sfv.Item(b"\x00" * 32), "two": sfv.Item(mac)}),
    )


async def test_configured_tag_selects_among_several_signatures(tmp_path: Path) -> None:
    view = _two_signatures(request(), "payments-api", "orders-api")
    identity = await make_auth(tmp_path, tag="orders-api").authenticate(view)
    assert identity is not None and identity.claims["label"] == "two"
    # without a tag the first signature with our keyid is the one verified (and it is bad)
    await denied(make_auth(tmp_path), view, Reason.BAD_SIGNATURE)
    # the tag picks the signature: a bad one under the configured tag is not excused
    swapped = _two_signatures(request(), "orders-api", "payments-api")
    await denied(make_auth(tmp_path, tag="orders-api"), swapped, Reason.BAD_SIGNATURE)


async def test_no_signature_with_the_configured_tag_is_refused(tmp_path: Path) -> None:
    view = _two_signatures(request(), "payments-api", "billing-api")
    error = await denied(make_auth(tmp_path, tag="orders-api"), view, Reason.MALFORMED_SIGNATURE)
    assert error.description == "no signature with the expected tag"


@pytest.mark.parametrize("field", ["repr-digest", "digest"])
async def test_attack_any_covered_body_digest_is_verified(tmp_path: Path, field: str) -> None:
    """Not only content-digest: a signature covering Repr-Digest or a legacy Digest vouches for
    the body too, so those are verified against it (never left unchecked)."""
    auth = make_auth(tmp_path)
    digest = content_digest(BODY) if field == "repr-digest" else legacy_digest(BODY)
    signed = sign_view(request(headers={field: digest}), [*FULL, field])
    assert await auth.authenticate(signed)
    await denied(auth, swap_body(signed, b"evil"), Reason.DIGEST_MISMATCH)
    empty = content_digest(b"") if field == "repr-digest" else legacy_digest(b"")
    unforwarded = request(body=b"", headers={field: empty, "content-length": "42"})
    await denied(auth, sign_view(unforwarded, [*FULL, field]), Reason.BODY_NOT_FORWARDED)


async def test_repr_digest_of_an_encoded_body_cannot_vouch_for_it(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    view = request(headers={"repr-digest": content_digest(BODY), "content-encoding": "gzip"})
    await denied(auth, sign_view(view, [*FULL, "repr-digest"]), Reason.DIGEST_MISMATCH)
