"""mTLS: chain re-verification, SPIFFE identity, principal rules, XFCC, cache, thumbprints."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.verification import PolicyBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.authn.mtls import MtlsAuthenticator, cert_thumbprint_s256, parse_spiffe_id
from extauthz.authn.xfcc_trust import XfccModel
from extauthz.clock import FixedClock
from extauthz.config.loader import load_config
from extauthz.config.schema import MtlsSpec
from extauthz.decision import GrpcCode, Outcome, from_error
from extauthz.errors import AuthenticationError, AuthorizationError, Reason
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from extauthz.types import AuthMethod, RequestView
from tests.support.builders import make_ctx, make_view
from tests.support.certs import DAY, SERVER_AUTH, Issued, TestCA, url_encode, xfcc_for

NOW = 1_900_000_000.0
SVID = "spiffe://example.org/ns/orders/sa/api"
ROOT = TestCA.create("root", now=NOW)
INTER = ROOT.intermediate("intermediate", now=NOW)
OTHER_ROOT = TestCA.create("someone else's root", now=NOW)
LEAF = ROOT.issue(uris=[SVID], now=NOW)
VIA_INTER = INTER.issue(uris=["spiffe://example.org/ns/billing/sa/worker"], now=NOW)


def peer(*certs: Issued | TestCA, headers: dict[str, str] | None = None) -> RequestView:
    pem = "".join(c.pem for c in certs)
    return dataclasses.replace(make_view("/x", headers=headers),
                               peer_certificate=url_encode(pem) if pem else "")


def xfcc_view(header: str, *certs: Issued | TestCA) -> RequestView:
    return peer(*certs, headers={"x-forwarded-client-cert": header})


def make(tmp_path: Path, clock: FixedClock | None = None, root: TestCA = ROOT,
         **spec: Any) -> MtlsAuthenticator:
    root.write_bundle(tmp_path / "ca.pem")
    return MtlsAuthenticator.from_spec(
        "mtls", MtlsSpec.model_validate({"trust_bundles": ["ca.pem"], **spec}),
        make_ctx(clock=clock or FixedClock(NOW), base_dir=tmp_path),
    )


async def refused(auth: MtlsAuthenticator, v: RequestView) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(v)
    assert info.value.authenticator == "mtls"
    decision = from_error(info.value, "r")
    assert (decision.http_status, decision.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    return info.value


# -- chain verification ------------------------------------------------------------------------

async def test_valid_spiffe_certificate(tmp_path: Path) -> None:
    identity = await make(tmp_path).authenticate(peer(LEAF))
    assert identity is not None
    assert identity.method is AuthMethod.MTLS
    assert identity.subject == SVID
    assert identity.claims["spiffe_id"] == SVID
    assert identity.claims["trust_domain"] == "example.org"
    assert identity.claims["cert_sha256"] == LEAF.sha256_hex
    assert identity.expires_at == LEAF.cert.not_valid_after_utc.timestamp()
    assert dict(identity.headers) == {
        "x-auth-spiffe-id": SVID,
        "x-auth-cert-sha256": LEAF.sha256_hex,
    }


async def test_no_certificate_is_none(tmp_path: Path) -> None:
    assert await make(tmp_path).authenticate(peer()) is None


async def test_intermediate_from_the_peer_chain(tmp_path: Path) -> None:
    auth = make(tmp_path)
    identity = await auth.authenticate(peer(VIA_INTER, INTER))
    assert identity is not None and identity.subject.endswith("/sa/worker")


async def test_missing_intermediate_is_untrusted(tmp_path: Path) -> None:
    error = await refused(make(tmp_path), peer(VIA_INTER))
    assert error.reason is Reason.UNTRUSTED_CERT


async def test_wrong_ca_is_untrusted(tmp_path: Path) -> None:
    error = await refused(make(tmp_path), peer(OTHER_ROOT.issue(uris=[SVID], now=NOW)))
    assert error.reason is Reason.UNTRUSTED_CERT
    assert error.description == "client certificate not trusted"


async def test_attacker_cannot_bring_its_own_root_as_intermediate(tmp_path: Path) -> None:
    error = await refused(make(tmp_path),
                          peer(OTHER_ROOT.issue(uris=[SVID], now=NOW), OTHER_ROOT))
    assert error.reason is Reason.UNTRUSTED_CERT


async def test_expired(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, not_before=NOW - 10 * DAY, not_after=NOW - 1)
    assert (await refused(make(tmp_path), peer(leaf))).reason is Reason.CERT_EXPIRED


async def test_not_yet_valid(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, not_before=NOW + 60)
    assert (await refused(make(tmp_path), peer(leaf))).reason is Reason.CERT_NOT_YET_VALID


async def test_validity_boundaries_follow_the_clock(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, not_after=NOW + 100)
    clock = FixedClock(NOW + 100)
    assert await make(tmp_path, clock, cache_size=0).authenticate(peer(leaf)) is not None
    clock.advance(1)
    assert (await refused(make(tmp_path, clock), peer(leaf))).reason is Reason.CERT_EXPIRED


async def test_expired_intermediate_is_untrusted(tmp_path: Path) -> None:
    inter = ROOT.intermediate("short", now=NOW, not_before=NOW - 10 * DAY, not_after=NOW - 1)
    leaf = inter.issue(uris=[SVID], now=NOW)
    assert (await refused(make(tmp_path), peer(leaf, inter))).reason is Reason.UNTRUSTED_CERT


async def test_server_auth_only_eku_is_refused(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, eku=[SERVER_AUTH])
    error = await refused(make(tmp_path), peer(leaf))
    assert error.reason is Reason.CERT_INVALID
    assert "clientAuth" in error.description


async def test_missing_eku_is_refused_unless_allowed(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, eku=None)
    assert (await refused(make(tmp_path), peer(leaf))).reason is Reason.CERT_INVALID
    relaxed = make(tmp_path, require_client_auth_eku=False)
    assert await relaxed.authenticate(peer(leaf)) is not None
    # relaxing presence never accepts a *wrong* EKU
    wrong = ROOT.issue(uris=[SVID], now=NOW, eku=[SERVER_AUTH])
    assert (await refused(relaxed, peer(wrong))).reason is Reason.CERT_INVALID


async def test_ca_certificate_as_leaf_is_refused(tmp_path: Path) -> None:
    leaf = ROOT.issue(uris=[SVID], now=NOW, ca=True)
    assert (await refused(make(tmp_path), peer(leaf))).reason is Reason.CERT_INVALID
    # the trusted root itself is not a client certificate either
    assert (await refused(make(tmp_path), peer(ROOT))).reason is Reason.CERT_INVALID


@pytest.mark.parametrize(
    "uris",
    [
        [SVID, "https://example.org/other"],
        [SVID, "spiffe://example.org/ns/x/sa/y"],
    ],
)
async def test_spiffe_certificate_with_two_uri_sans_is_refused(
    tmp_path: Path, uris: list[str]
) -> None:
    leaf = ROOT.issue(uris=uris, now=NOW)
    error = await refused(make(tmp_path), peer(leaf))
    assert error.reason is Reason.CERT_INVALID
    assert "exactly one URI SAN" in error.description


@pytest.mark.parametrize(
    "uri",
    ["spiffe://Example.org/x", "spiffe://example.org/a/../b", "spiffe://example.org/a//b",
     "spiffe://example.org/a/", "spiffe://example.org/a?q=1", "spiffe://user@example.org/a",
     "spiffe://example.org:8443/a", "spiffe:///a", "SPIFFE://example.org/a"],
)
async def test_invalid_spiffe_ids_are_refused(tmp_path: Path, uri: str) -> None:
    leaf = ROOT.issue(uris=[uri], now=NOW)
    assert (await refused(make(tmp_path), peer(leaf))).reason is Reason.CERT_INVALID


async def test_subject_falls_back_to_dns_then_dn(tmp_path: Path) -> None:
    auth = make(tmp_path)
    dns = await auth.authenticate(
        peer(ROOT.issue(uris=["https://svc.example/"], dns=["svc.example", "b.example"],
                        now=NOW)))
    assert dns is not None and dns.subject == "svc.example"
    assert "spiffe_id" not in dns.claims and "x-auth-spiffe-id" not in dict(dns.headers)
    dn = await auth.authenticate(peer(ROOT.issue("legacy-client", now=NOW, san=False)))
    assert dn is not None and dn.subject == "CN=legacy-client,O=extauthz tests"


@pytest.mark.parametrize(
    "encoded",
    ["%%%", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
     "just text", "x" * 70_000],
)
async def test_malformed_peer_certificate(tmp_path: Path, encoded: str) -> None:
    v = dataclasses.replace(make_view("/x"), peer_certificate=encoded)
    assert (await refused(make(tmp_path), v)).reason is Reason.CERT_INVALID


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_peer_certificate_raises_only_authentication_error(text: str) -> None:
    auth = _SHARED
    with contextlib.suppress(AuthenticationError):
        auth._presented(dataclasses.replace(make_view("/x"), peer_certificate=text))


# -- cache -------------------------------------------------------------------------------------

class PolicySpy:
    """Counts full verifications (each one builds a verifier for the current time)."""

    def __init__(self, inner: PolicyBuilder) -> None:
        self.inner = inner
        self.count = 0

    def time(self, when: Any) -> PolicyBuilder:
        self.count += 1
        return self.inner.time(when)


def spy(auth: MtlsAuthenticator) -> PolicySpy:
    s = PolicySpy(auth._policy)
    auth._policy = s  # type: ignore[assignment]
    return s


async def test_verification_is_cached_by_fingerprint(tmp_path: Path) -> None:
    auth = make(tmp_path)
    counter = spy(auth)
    for _ in range(5):
        assert await auth.authenticate(peer(LEAF)) is not None
    assert counter.count == 1
    assert await auth.authenticate(peer(VIA_INTER, INTER)) is not None
    assert counter.count == 2


async def test_cache_never_outlives_the_certificate(tmp_path: Path) -> None:
    clock = FixedClock(NOW)
    leaf = ROOT.issue(uris=[SVID], now=NOW, not_after=NOW + 100)
    auth = make(tmp_path, clock)
    counter = spy(auth)
    assert await auth.authenticate(peer(leaf)) is not None
    clock.advance(99)
    assert await auth.authenticate(peer(leaf)) is not None
    assert counter.count == 1
    clock.advance(2)
    assert (await refused(auth, peer(leaf))).reason is Reason.CERT_EXPIRED


async def test_cache_ttl_and_size_bound(tmp_path: Path) -> None:
    clock = FixedClock(NOW)
    auth = make(tmp_path, clock, cache_ttl_seconds=10, cache_size=2)
    counter = spy(auth)
    await auth.authenticate(peer(LEAF))
    clock.advance(10)
    await auth.authenticate(peer(LEAF))
    assert counter.count == 2
    for i in range(3):
        await auth.authenticate(peer(ROOT.issue(dns=[f"c{i}.example"], now=NOW)))
    assert len(auth._cache) == 2


async def test_a_repeated_presentation_is_not_parsed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = make(tmp_path, xfcc=True)
    loads: list[str] = []
    real = auth._load_pem
    monkeypatch.setattr(auth, "_load_pem", lambda pem, what: loads.append(what) or real(pem, what))
    real_read = XfccModel.read
    monkeypatch.setattr(XfccModel, "read",
                        lambda self, header: loads.append("XFCC") or real_read(self, header))
    header = xfcc_for(LEAF)
    for _ in range(3):
        assert (await auth.authenticate(xfcc_view(header))).subject == SVID  # type: ignore[union-attr]
        assert (await auth.authenticate(peer(LEAF))).subject == SVID  # type: ignore[union-attr]
    assert loads == ["XFCC", "peer certificate"]  # once per distinct presentation
    # the same peer certificate with an XFCC header beside it is another presentation
    assert await auth.authenticate(peer(LEAF, headers={"x-forwarded-client-cert": header}))
    assert len(loads) > 2


async def test_a_cached_presentation_still_meets_the_principal_rules(tmp_path: Path) -> None:
    auth = make(tmp_path, allowed_spiffe_ids=["spiffe://example.org/other"])
    for _ in range(2):
        with pytest.raises(AuthorizationError):
            await auth.authenticate(peer(LEAF))


async def test_failures_are_not_cached(tmp_path: Path) -> None:
    auth = make(tmp_path)
    counter = spy(auth)
    await refused(auth, peer(VIA_INTER))
    assert await auth.authenticate(peer(VIA_INTER, INTER)) is not None
    assert counter.count == 2


# -- XFCC --------------------------------------------------------------------------------------

async def test_xfcc_is_ignored_unless_enabled(tmp_path: Path) -> None:
    v = xfcc_view(xfcc_for(LEAF))
    assert await make(tmp_path).authenticate(v) is None
    assert make(tmp_path).credential_headers() == ()


async def test_xfcc_cert_when_enabled(tmp_path: Path) -> None:
    auth = make(tmp_path, xfcc=True)
    identity = await auth.authenticate(xfcc_view(xfcc_for(LEAF, uri=SVID)))
    assert identity is not None and identity.subject == SVID
    assert auth.credential_headers() == ("x-forwarded-client-cert",)


async def test_xfcc_chain_supplies_intermediates(tmp_path: Path) -> None:
    without = xfcc_view(xfcc_for(VIA_INTER))
    auth = make(tmp_path, xfcc=True)
    assert (await refused(auth, without)).reason is Reason.UNTRUSTED_CERT
    assert await auth.authenticate(
        xfcc_view(xfcc_for(VIA_INTER, chain=[VIA_INTER, INTER]))) is not None
    # Once the leaf has been verified with its chain, the cached result stands for the leaf.
    assert await auth.authenticate(without) is not None


async def test_xfcc_element_count_must_fit_the_model(tmp_path: Path) -> None:
    # One SANITIZE_SET Envoy (xfcc: true): exactly one element; an extra one in either place
    # (client-sent and forwarded by a misconfigured proxy, or an unknown hop) is refused.
    auth = make(tmp_path, xfcc=True)
    forged = OTHER_ROOT.issue(uris=["spiffe://example.org/ns/admin/sa/root"], now=NOW)
    for header in (xfcc_for(forged) + "," + xfcc_for(LEAF), xfcc_for(LEAF) + "," + xfcc_for(forged),
                   xfcc_for(LEAF) + "," + xfcc_for(LEAF)):
        error = await refused(auth, xfcc_view(header))
        assert error.reason is Reason.XFCC_MISMATCH, error.detail


async def test_xfcc_without_cert_cannot_be_verified(tmp_path: Path) -> None:
    auth = make(tmp_path, xfcc=True)
    header = f"By=spiffe://example.org/edge;Hash={LEAF.sha256_hex};URI={SVID}"
    error = await refused(auth, xfcc_view(header))
    assert error.reason is Reason.XFCC_MISMATCH
    assert "no Cert" in error.detail


async def test_xfcc_hash_must_match_the_cert(tmp_path: Path) -> None:
    auth = make(tmp_path, xfcc=True)
    for bad in ("00" * 32, LEAF.sha256_hex.upper()):  # Envoy writes lowercase hex
        header = xfcc_for(LEAF).replace(LEAF.sha256_hex, bad)
        assert (await refused(auth, xfcc_view(header))).reason is Reason.XFCC_MISMATCH


@pytest.mark.parametrize("header", ["", "By=a;", 'Subject="open', "Cert=nonsense",
                                    'Hash=' + "0" * 64 + ';Cert="' + url_encode(LEAF.pem + LEAF.pem)
                                    + '"', "Cert=" + url_encode(LEAF.pem)])
async def test_malformed_xfcc_is_refused(tmp_path: Path, header: str) -> None:
    auth = make(tmp_path, xfcc=True)
    assert (await refused(auth, xfcc_view(header))).reason is Reason.XFCC_MISMATCH


async def test_peer_certificate_and_xfcc_must_name_the_same_certificate(tmp_path: Path) -> None:
    # One SANITIZE_SET Envoy writes both from the same connection: they agree, or the model
    # does not describe the deployment (refused, whichever of the two is "right").
    auth = make(tmp_path, xfcc=True)
    identity = await auth.authenticate(xfcc_view(xfcc_for(LEAF), LEAF))
    assert identity is not None and identity.subject == SVID
    other = ROOT.issue(uris=["spiffe://example.org/ns/x/sa/other"], now=NOW)
    for header in (xfcc_for(other), "garbage", xfcc_for(LEAF) + "," + xfcc_for(LEAF)):
        error = await refused(auth, xfcc_view(header, LEAF))
        assert error.reason is Reason.XFCC_MISMATCH
    untrusted = OTHER_ROOT.issue(uris=[SVID], now=NOW)
    error = await refused(auth, xfcc_view(xfcc_for(untrusted), untrusted))
    assert error.reason is Reason.UNTRUSTED_CERT


# -- principal rules ---------------------------------------------------------------------------

def svid(path: str, domain: str = "example.org") -> Issued:
    return ROOT.issue(uris=[f"spiffe://{domain}{path}"], now=NOW)


@pytest.mark.parametrize(
    ("rules", "cert", "allowed"),
    [
        ({}, svid("/anything"), True),
        ({"allowed_spiffe_ids": [SVID]}, LEAF, True),
        ({"allowed_spiffe_ids": [SVID]}, svid("/ns/orders/sa/api2"), False),
        ({"trust_domains": ["example.org"]}, svid("/x"), True),
        ({"trust_domains": ["example.org"]}, svid("/x", "evil.org"), False),
        ({"spiffe_path_globs": ["/ns/orders/*"]}, svid("/ns/orders/sa/api"), True),
        ({"spiffe_path_globs": ["/ns/orders/*"]}, svid("/ns/billing/sa/api"), False),
        ({"spiffe_path_globs": ["/ns/*/sa/api"]}, svid("/ns/a/b/sa/api"), True),  # * spans /
        ({"spiffe_path_globs": ["/ns/orders/*"]}, svid("/NS/orders/sa/api"), False),
        ({"trust_domains": ["example.org"], "spiffe_path_globs": ["/ns/orders/*"]},
         svid("/ns/orders/sa/api", "evil.org"), False),
        ({"trust_domains": ["example.org"], "spiffe_path_globs": ["/ns/orders/*"]},
         svid("/ns/orders/sa/api"), True),
        ({"dns_names": ["svc.example"]}, ROOT.issue(dns=["SVC.example"], now=NOW), True),
        ({"dns_names": ["svc.example"]}, ROOT.issue(dns=["other.example"], now=NOW), False),
        ({"dns_names": ["svc.example"]}, ROOT.issue("svc.example", now=NOW, san=False), False),
        ({"allowed_spiffe_ids": [SVID], "dns_names": ["svc.example"]},
         ROOT.issue(dns=["svc.example"], now=NOW), True),
    ],
)
async def test_principal_rules(
    tmp_path: Path, rules: dict[str, Any], cert: Issued, allowed: bool
) -> None:
    auth = make(tmp_path, **rules)
    if allowed:
        identity = await auth.authenticate(peer(cert))
        assert identity is not None and auth.principal_allowed(identity)
    else:
        with pytest.raises(AuthorizationError) as info:
            await auth.authenticate(peer(cert))
        assert info.value.reason is Reason.FORBIDDEN


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"allowed_spiffe_ids": ["spiffe://ok/x", "https://nope"]},
         "allowed_spiffe_ids[1]: not a valid SPIFFE ID"),
        ({"trust_domains": ["Example.org"]}, "trust_domains[0]"),
        ({"spiffe_path_globs": ["ns/*"]}, "spiffe_path_globs[0]: must start with '/'"),
    ],
)
def test_rule_validation(tmp_path: Path, rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make(tmp_path, **rules)


def test_trust_bundle_errors(tmp_path: Path) -> None:
    ctx = make_ctx(base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"trust_bundles\[0\]: .*cannot read"):
        MtlsAuthenticator.from_spec("m", MtlsSpec(trust_bundles=["missing.pem"]), ctx)
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(ValueError, match="no PEM certificates"):
        MtlsAuthenticator.from_spec("m", MtlsSpec(trust_bundles=["empty.pem"]), ctx)
    (tmp_path / "leaf.pem").write_text(ROOT.pem + LEAF.pem)
    with pytest.raises(ValueError, match=r"certificate 2 .* is not a CA certificate"):
        MtlsAuthenticator.from_spec("m", MtlsSpec(trust_bundles=["leaf.pem"]), ctx)


async def test_several_bundles(tmp_path: Path) -> None:
    ROOT.write_bundle(tmp_path / "a.pem")
    OTHER_ROOT.write_bundle(tmp_path / "b.pem")
    auth = MtlsAuthenticator.from_spec(
        "m", MtlsSpec(trust_bundles=["a.pem", str(tmp_path / "b.pem")]),
        make_ctx(clock=FixedClock(NOW), base_dir=tmp_path))
    assert await auth.authenticate(peer(LEAF)) is not None
    assert await auth.authenticate(peer(OTHER_ROOT.issue(dns=["x.example"], now=NOW)))


# -- thumbprints, SPIFFE IDs, challenge --------------------------------------------------------

def test_cert_thumbprint_s256() -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(LEAF.der).digest()).decode().rstrip("=")
    assert len(expected) == 43
    assert cert_thumbprint_s256(LEAF.pem) == expected
    assert cert_thumbprint_s256(LEAF.pem.encode()) == expected
    assert cert_thumbprint_s256(LEAF.der) == expected
    assert cert_thumbprint_s256(url_encode(LEAF.pem)) == expected
    assert cert_thumbprint_s256(LEAF.pem + ROOT.pem) == expected  # first certificate counts
    for bad in ("nope", b"nope", ""):
        with pytest.raises(ValueError):
            cert_thumbprint_s256(bad)


async def test_identity_carries_the_thumbprint(tmp_path: Path) -> None:
    identity = await make(tmp_path).authenticate(peer(LEAF))
    assert identity is not None
    assert identity.claims["x5t#S256"] == cert_thumbprint_s256(LEAF.pem)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("spiffe://example.org", ("example.org", "")),
        ("spiffe://example.org/ns/a", ("example.org", "/ns/a")),
        ("spiffe://a-b_c.d/x.y/z", ("a-b_c.d", "/x.y/z")),
        ("spiffe://example.org/./a", None),
        ("spiffe://example.org/" + "a" * 2048, None),
        ("http://example.org/a", None),
        ("spiffe://example.org/ns/a\n", None),  # "$" would have matched before the newline
        ("spiffe://example.org\n", None),
    ],
)
def test_parse_spiffe_id(value: str, parsed: tuple[str, str] | None) -> None:
    assert parse_spiffe_id(value) == parsed


def test_challenge(tmp_path: Path) -> None:
    auth = make(tmp_path)
    assert auth.challenge() == 'ClientCert realm="extauthz"'
    error = AuthenticationError(Reason.CERT_EXPIRED, "client certificate expired")
    assert auth.challenge(error) == ('ClientCert realm="extauthz", error="invalid_certificate", '
                                     'error_description="client certificate expired"')


# -- through the pipeline ----------------------------------------------------------------------

async def test_pipeline_statuses(tmp_path: Path) -> None:
    ROOT.write_bundle(tmp_path / "ca.pem")
    (tmp_path / "c.yaml").write_text(
        "authenticators:\n"
        "  workloads:\n"
        "    mtls: {trust_bundles: [ca.pem], xfcc: true, trust_domains: [example.org],\n"
        "           spiffe_path_globs: ['/ns/orders/*']}\n"
        "routes:\n"
        "- {name: r, authn: [workloads]}\n"
    )
    snapshot = compile_config(load_config(tmp_path / "c.yaml"), Metrics(), clock=FixedClock(NOW),
                              registry={"mtls": MtlsAuthenticator.from_spec})
    engine = Engine(Metrics(), snapshot)

    ok = await engine.check(peer(LEAF, headers={"x-forwarded-client-cert": xfcc_for(LEAF),
                                                 "x-auth-spiffe-id": "spoofed"}))
    assert ok.outcome is Outcome.ALLOW and ok.grpc_code is GrpcCode.OK
    upstream = dict(ok.upstream_headers)
    assert upstream["x-auth-subject"] == SVID
    assert upstream["x-auth-method"] == "mtls"
    assert upstream["x-auth-spiffe-id"] == SVID
    assert upstream["x-auth-cert-sha256"] == LEAF.sha256_hex
    assert "x-forwarded-client-cert" in ok.remove_headers

    missing = await engine.check(peer())
    assert (missing.http_status, missing.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    assert ("www-authenticate", 'ClientCert realm="extauthz"') in missing.response_headers

    untrusted = await engine.check(peer(OTHER_ROOT.issue(uris=[SVID], now=NOW)))
    assert (untrusted.http_status, untrusted.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    assert untrusted.reason is Reason.UNTRUSTED_CERT

    mismatch = await engine.check(peer(LEAF, headers={
        "x-forwarded-client-cert": xfcc_for(LEAF) + "," + xfcc_for(LEAF)}))
    assert (mismatch.http_status, mismatch.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    assert mismatch.reason is Reason.XFCC_MISMATCH
    assert ("www-authenticate", 'ClientCert realm="extauthz", error="invalid_certificate", '
            'error_description="x-forwarded-client-cert does not fit the trust model"'
            ) in mismatch.response_headers

    forbidden = await engine.check(peer(svid("/ns/billing/sa/api")))
    assert (forbidden.http_status, forbidden.grpc_code) == (403, GrpcCode.PERMISSION_DENIED)
    assert forbidden.reason is Reason.FORBIDDEN


def _shared() -> MtlsAuthenticator:
    import tempfile

    directory = Path(tempfile.mkdtemp())
    return make(directory, xfcc=True)


_SHARED = _shared()


def test_trust_bundles_are_watched_for_reload(tmp_path: Path) -> None:
    assert make(tmp_path).surface.source_files == (tmp_path / "ca.pem",)
