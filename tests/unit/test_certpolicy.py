"""Leaf key/name policy, X509-SVID MUSTs, SPIFFE federation, chain depth, trust anchors, and
``extauthz check`` with a URL-encoded client certificate (issue 11 items 3, 5, 6, 8, 9)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn.mtls import MtlsAuthenticator, load_trust_bundle
from extauthz.cli import main
from extauthz.clock import FixedClock
from extauthz.config.loader import load_config
from extauthz.config.schema import MtlsSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import AuthenticationError, ConfigError, Reason
from extauthz.metrics import Metrics
from extauthz.snapshot import compile_config
from extauthz.types import RequestView
from tests.support.builders import make_ctx, make_view
from tests.support.certs import CLIENT_AUTH, DAY, Issued, TestCA, _ca_key_usage, _utc, url_encode
from tests.support.hypo import budget

NOW = 1_900_000_000.0
ROOT = TestCA.create("policy root", now=NOW)
DOMAIN_A = TestCA.create("domain a", now=NOW)
DOMAIN_B = TestCA.create("domain b", now=NOW)


def leaf(ca: TestCA, key: Any = None, *, name: str | None = "client",
         uris: tuple[str, ...] = ("spiffe://example.org/ns/a/sa/b",), san_critical: bool = False,
         usage: dict[str, bool] | None = None) -> x509.Certificate:
    """A leaf signed by ``ca`` with any public key, subject, SANs and keyUsage."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)] if name else [])
    flags = {"digital_signature": True, "content_commitment": False, "key_encipherment": False,
             "data_encipherment": False, "key_agreement": False, "key_cert_sign": False,
             "crl_sign": False, "encipher_only": False, "decipher_only": False, **(usage or {})}
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_utc(NOW - DAY)).not_valid_after(_utc(NOW + DAY))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**flags), critical=True)
        .add_extension(x509.ExtendedKeyUsage([CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.issued.key.public_key()), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=san_critical)
    return builder.sign(ca.issued.key, hashes.SHA256())


def view_of(*certs: x509.Certificate) -> RequestView:
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    return dataclasses.replace(make_view("/x"), peer_certificate=url_encode(pem))


def make(tmp_path: Path, **spec: Any) -> MtlsAuthenticator:
    ROOT.write_bundle(tmp_path / "ca.pem")
    DOMAIN_A.write_bundle(tmp_path / "a.pem")
    DOMAIN_B.write_bundle(tmp_path / "b.pem")
    data = {"trust_bundles": ["ca.pem"], **spec}
    return MtlsAuthenticator.from_spec("mtls", MtlsSpec.model_validate(data),
                                       make_ctx(clock=FixedClock(NOW), base_dir=tmp_path))


async def refused(auth: MtlsAuthenticator, view: RequestView) -> AuthenticationError:
    """Expect a refusal; every one is 401 / UNAUTHENTICATED with the ClientCert challenge."""
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(view)
    decision = from_error(info.value, "r")
    assert (decision.http_status, decision.grpc_code) == (401, GrpcCode.UNAUTHENTICATED)
    assert auth.challenge(info.value).startswith("ClientCert ")
    return info.value


# -- leaf key and names (webpki client profile, RFC 5280) --------------------------------------


@pytest.mark.parametrize(("key", "message"), [
    (rsa.generate_private_key(65537, 1024), "RSA key shorter than 2048"),
    (rsa.generate_private_key(65537, 2052), "not a multiple of 8"),
    (dsa.generate_private_key(2048), "key type not allowed"),
    (ec.generate_private_key(ec.SECP192R1()), "EC curve not allowed"),
    (ec.generate_private_key(ec.SECP224R1()), "EC curve not allowed"),
], ids=["rsa1024", "rsa2052", "dsa", "p192", "p224"])
async def test_weak_or_unusual_leaf_keys_are_refused(
        tmp_path: Path, key: Any, message: str) -> None:
    error = await refused(make(tmp_path), view_of(leaf(ROOT, key)))
    assert error.reason is Reason.CERT_INVALID
    assert message in error.description


@pytest.mark.parametrize("key", [rsa.generate_private_key(65537, 2048),
                                 ec.generate_private_key(ec.SECP384R1()),
                                 ec.generate_private_key(ec.SECP521R1()),
                                 ed25519.Ed25519PrivateKey.generate()],
                         ids=["rsa2048", "p384", "p521", "ed25519"])
async def test_allowed_leaf_keys(tmp_path: Path, key: Any) -> None:
    assert await make(tmp_path).authenticate(view_of(leaf(ROOT, key))) is not None


async def test_empty_subject_needs_a_critical_san(tmp_path: Path) -> None:
    auth = make(tmp_path)
    error = await refused(auth, view_of(leaf(ROOT, name=None, san_critical=False)))
    assert "non-critical subjectAltName" in error.description
    assert await auth.authenticate(view_of(leaf(ROOT, name=None, san_critical=True))) is not None


# -- X509-SVID leaf rules ----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"uris": ("spiffe://example.org",)}, "must have a path"),
    ({"uris": ("spiffe://example.org/",)}, "invalid SPIFFE ID"),
    ({"usage": {"crl_sign": True}}, "keyCertSign or cRLSign"),
    ({"usage": {"key_cert_sign": True}}, "keyCertSign or cRLSign"),
    ({"usage": {"digital_signature": False, "key_agreement": True}}, "digitalSignature"),
], ids=["no-path", "root-path", "crlsign", "keycertsign", "no-digitalsignature"])
async def test_svid_leaf_musts(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    error = await refused(make(tmp_path), view_of(leaf(ROOT, **kwargs)))
    assert error.reason is Reason.CERT_INVALID
    assert message in error.description


# -- SPIFFE federation: per-trust-domain bundles ------------------------------------------------


def federated(tmp_path: Path, **spec: Any) -> MtlsAuthenticator:
    return make(tmp_path, spiffe_bundles=[{"trust_domain": "a.example", "bundle": "a.pem"},
                                          {"trust_domain": "b.example", "bundle": "b.pem"}],
                **spec)


async def test_an_svid_must_chain_to_its_own_domains_bundle(tmp_path: Path) -> None:
    auth = federated(tmp_path)
    for ca, domain in ((DOMAIN_A, "a.example"), (DOMAIN_B, "b.example")):
        identity = await auth.authenticate(view_of(leaf(ca, uris=(f"spiffe://{domain}/w",))))
        assert identity is not None and identity.claims["trust_domain"] == domain
    # domain A's SVID issued by domain B's CA (both bundles trusted): refused
    for ca, domain in ((DOMAIN_B, "a.example"), (DOMAIN_A, "b.example"), (ROOT, "a.example")):
        error = await refused(auth, view_of(leaf(ca, uris=(f"spiffe://{domain}/w",))))
        assert error.reason is Reason.UNTRUSTED_CERT


async def test_with_federation_an_unlisted_domain_is_not_trusted(tmp_path: Path) -> None:
    auth = federated(tmp_path)
    # chains to trust_bundles, but names a trust domain without a bundle
    error = await refused(auth, view_of(leaf(ROOT, uris=("spiffe://c.example/w",))))
    assert error.reason is Reason.UNTRUSTED_CERT
    # a certificate without a SPIFFE ID still uses trust_bundles
    assert await auth.authenticate(view_of(leaf(ROOT, uris=()))) is not None


async def test_spiffe_bundles_alone_trust_no_plain_certificate(tmp_path: Path) -> None:
    auth = federated(tmp_path, trust_bundles=[])
    error = await refused(auth, view_of(leaf(DOMAIN_A, uris=())))
    assert error.reason is Reason.UNTRUSTED_CERT


def test_federation_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trust domain is listed twice"):
        MtlsSpec.model_validate({"spiffe_bundles": [{"trust_domain": "a", "bundle": "a.pem"}] * 2})
    with pytest.raises(ValueError, match="give trust_bundles or spiffe_bundles"):
        MtlsSpec.model_validate({})
    with pytest.raises(ValueError, match=r"spiffe_bundles\[0\]\.trust_domain"):
        make(tmp_path, spiffe_bundles=[{"trust_domain": "A.EXAMPLE", "bundle": "a.pem"}])


# -- chain depth -------------------------------------------------------------------------------


def chain(depth: int) -> tuple[TestCA, list[TestCA]]:
    cas = [ROOT]
    for i in range(depth):
        ca = cas[-1].intermediate(f"level {i}", now=NOW)
        # path_length=0 in TestCA.intermediate: rebuild with no limit for deep chains
        cas.append(dataclasses.replace(ca, issued=_unlimited(cas[-1], ca, i)))
    return cas[-1], cas[1:]


def _unlimited(parent: TestCA, ca: TestCA, i: int) -> Issued:
    key = ca.issued.key
    cert = (x509.CertificateBuilder().subject_name(ca.cert.subject)
            .issuer_name(parent.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number() + i)
            .not_valid_before(_utc(NOW - DAY)).not_valid_after(_utc(NOW + 10 * DAY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                parent.issued.key.public_key()), critical=False)
            .sign(parent.issued.key, hashes.SHA256()))
    return Issued(cert, key)


@pytest.mark.parametrize(("depth", "limit", "ok"), [(2, 2, True), (3, 2, False), (8, None, True),
                                                    (9, None, False), (0, 0, True),
                                                    (1, 0, False)])
async def test_chain_depth_is_configurable_default_8(
        tmp_path: Path, depth: int, limit: int | None, ok: bool) -> None:
    issuer, intermediates = chain(depth)
    spec = {} if limit is None else {"max_intermediates": limit}
    auth = make(tmp_path, **spec)
    certs = [leaf(issuer), *(ca.cert for ca in reversed(intermediates))]
    if ok:
        assert await auth.authenticate(view_of(*certs)) is not None
    else:
        assert (await refused(auth, view_of(*certs))).reason is Reason.UNTRUSTED_CERT


# -- malformed trust anchors: located ConfigErrors, never a traceback ---------------------------


def _ca_with_raw_name_constraints(value: bytes) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "constrained")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(_utc(NOW - DAY)).not_valid_after(_utc(NOW + DAY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.UnrecognizedExtension(ExtensionOID.NAME_CONSTRAINTS, value),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _validate(tmp_path: Path, bundle: bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp_path / "bundle.pem").write_bytes(bundle)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "authenticators": {"certs": {"mtls": {"trust_bundles": ["bundle.pem"]}}},
        "routes": [{"name": "r", "authn": ["certs"]}]}))
    code = main(["validate", "--config", str(config)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("value", [
    "300aa0083006870401020304",          # an IPv4 subtree without its mask (was a TypeError)
    "300ea00c300a8708c0a80000ff00ff00",  # a non-contiguous mask
    "3009a0073005820380ff41",            # a dNSName that is not text
    "3000", "0102",
], ids=["ip-short", "ip-mask", "dns-bytes", "empty", "garbage"])
def test_malformed_name_constraints_are_a_located_config_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, err = _validate(tmp_path, _ca_with_raw_name_constraints(bytes.fromhex(value)), capsys)
    assert code == 1, err
    assert "authenticators.certs.mtls: trust_bundles[0]:" in err
    assert "certificate 1 is malformed" in err
    assert "Traceback" not in err


def _pem(der: bytes) -> bytes:
    import base64
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


_VALID_DER = ROOT.issued.der


@st.composite
def bundles(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "pem-random", "pem-mutated", "pem-truncated"]))
    if kind == "raw":
        return draw(st.binary(max_size=512))
    if kind == "pem-random":
        return _pem(draw(st.binary(min_size=1, max_size=512)))
    der = bytearray(_VALID_DER)
    if kind == "pem-truncated":
        return _pem(bytes(der[:draw(st.integers(1, len(der) - 1))]))
    for _ in range(draw(st.integers(1, 4))):
        der[draw(st.integers(0, len(der) - 1))] = draw(st.integers(0, 255))
    return _pem(bytes(der))


@budget(60)
@given(bundle=bundles(), federated=st.booleans())
def test_random_der_or_pem_in_a_trust_bundle_never_gives_a_traceback(
        tmp_path_factory: pytest.TempPathFactory, bundle: bytes, federated: bool) -> None:
    # the whole validate/serve path: load, compile (every authenticator built), ConfigError only
    directory = tmp_path_factory.mktemp("bundle")
    (directory / "b.pem").write_bytes(bundle)
    mtls: dict[str, Any] = (
        {"spiffe_bundles": [{"trust_domain": "example.org", "bundle": "b.pem"}]} if federated
        else {"trust_bundles": ["b.pem"]})
    config = directory / "c.yaml"
    config.write_text(yaml.safe_dump({"authenticators": {"certs": {"mtls": mtls}},
                                      "routes": [{"name": "r", "authn": ["certs"]}]}))
    try:
        compile_config(load_config(config), Metrics())
    except ConfigError as exc:
        where = "spiffe_bundles[0].bundle" if federated else "trust_bundles[0]"
        assert f"authenticators.certs.mtls: {where}: " in str(exc)
    with contextlib.suppress(ValueError):
        load_trust_bundle(directory / "b.pem", "x")


# -- extauthz check with the client certificate as Envoy sends it -------------------------------


@pytest.mark.parametrize("encoded", [False, True])
def test_check_accepts_a_pem_or_url_encoded_client_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], encoded: bool) -> None:
    client = TestCA.create("check root")
    client.write_bundle(tmp_path / "ca.pem")
    cert = client.issue(uris=["spiffe://example.org/ns/a/sa/check"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "authenticators": {"certs": {"mtls": {"trust_bundles": ["ca.pem"]}}},
        "routes": [{"name": "r", "authn": ["certs"]}]}))
    request = tmp_path / "req.yaml"
    request.write_text(yaml.safe_dump(
        {"path": "/x", "client_cert": url_encode(cert.pem) if encoded else cert.pem}))
    assert main(["check", "--config", str(config), "--request", str(request)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["headers_added"]["x-auth-subject"] == "spiffe://example.org/ns/a/sa/check"
