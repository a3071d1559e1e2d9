"""Properties of client-certificate input: the XFCC header and Envoy's URL-encoded PEM peer
certificate, through the mTLS authenticator of the all-kinds configuration.

Mutations of a *valid* XFCC element and of a valid certificate's DER (re-encoded, so the PEM
armour is right and the bytes inside are not) reach the X.509 loader and verifier, not only the
header grammar. Invariant: ``parse_xfcc`` raises only ``XfccError``; the authenticator raises only
``AuthenticationError`` (a mutated certificate is never accepted unless it is the same DER).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn.mtls import MtlsAuthenticator
from extauthz.authn.xfcc import XfccError, parse_xfcc
from extauthz.errors import AuthenticationError
from extauthz.types import Headers, RequestView
from tests.support.allkinds import AllKinds, Running, write_all_kinds
from tests.support.certs import xfcc_for
from tests.support.hypo import budget


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("prop-certs"))


@pytest.fixture(scope="module")
def running(kinds: AllKinds) -> Iterator[Running]:
    with Running(kinds) as started:
        yield started


def _mtls(running: Running) -> MtlsAuthenticator:
    authenticator = running.snapshot.authenticators["certs"]
    assert isinstance(authenticator, MtlsAuthenticator)
    return authenticator


def _outcome(running: Running, *, xfcc: str | None = None, peer: str = "") -> str:
    headers = {"x-forwarded-client-cert": xfcc} if xfcc is not None else {}
    view = RequestView(method="GET", host="h", path="/", headers=Headers(headers),
                       peer_certificate=peer)
    try:
        identity = running.run(_mtls(running).authenticate(view))
    except AuthenticationError as exc:
        return exc.reason.value
    return "allow" if identity is not None else "absent"


@st.composite
def mutated(draw: st.DrawFn, text: str, alphabet: str) -> str:
    """``text`` with a few characters replaced, inserted or deleted."""
    out = list(text)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.sampled_from(alphabet))
        if op == "insert" or at == len(out):
            out.insert(at, char)
        elif op == "replace":
            out[at] = char
        else:
            del out[at]
    return "".join(out)


_XFCC_CHARS = 'ABCabc019=;,"\\% \t%2C%3D-+/:é\x00'


@budget(200)
@given(st.data())
def test_mutated_xfcc_is_refused_cleanly(running: Running, kinds: AllKinds,
                                         data: st.DataObject) -> None:
    valid = xfcc_for(kinds.leaf)
    header = data.draw(st.one_of(
        mutated(valid, _XFCC_CHARS),
        mutated(valid[:200], _XFCC_CHARS),
        st.lists(st.sampled_from([valid, ",", ";", "By=x", 'Hash="', "Cert=", "%"]),
                 max_size=4).map("".join),
    ))
    with contextlib.suppress(XfccError):
        parse_xfcc(header)
    outcome = _outcome(running, xfcc=header)
    if outcome == "allow":
        # only an element whose Cert is still the trusted leaf can pass
        element = parse_xfcc(header)[-1]
        assert element.cert is not None
        (cert,) = x509.load_pem_x509_certificates(element.cert.encode())
        assert cert == kinds.leaf.cert  # the PEM text may differ (blanks); the DER may not


def _der_to_pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@budget(200)
@given(st.data())
def test_mutated_peer_certificate_is_refused_cleanly(running: Running, kinds: AllKinds,
                                                     data: st.DataObject) -> None:
    der = kinds.leaf.cert.public_bytes(serialization.Encoding.DER)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(der) - 1), st.integers(0, 255)),
                               min_size=1, max_size=3))
    changed = bytearray(der)
    for at, value in flips:
        changed[at] = value
    cut = data.draw(st.integers(len(der) // 2, len(der)))
    pem = _der_to_pem(bytes(changed[:cut]))
    encoded = data.draw(st.sampled_from([quote(pem, safe=""), pem]))
    outcome = _outcome(running, peer=encoded)
    if outcome == "allow":
        assert bytes(changed[:cut]) == der


@budget(100)
@given(st.integers(0, 255))
def test_any_certificate_version_is_refused_cleanly(running: Running, kinds: AllKinds,
                                                     version: int) -> None:
    """Regression: a client certificate whose version byte is not 0-2 (``106``) made
    cryptography raise ``InvalidVersion`` (not a ValueError): 503 internal_error, not 401."""
    der = bytearray(kinds.leaf.cert.public_bytes(serialization.Encoding.DER))
    at = der.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))  # TBSCertificate.version = v3
    assert at > 0
    der[at + 4] = version
    pem = _der_to_pem(bytes(der))
    peer = _outcome(running, peer=quote(pem, safe=""))
    xfcc = _outcome(running, xfcc=f"Cert={quote(pem, safe='')}")
    if version == 2:
        assert (peer, xfcc) == ("allow", "allow")
    else:
        assert peer == xfcc == "cert_invalid" or "allow" not in (peer, xfcc)


@pytest.mark.parametrize("oid", [b"\x25", b"\x11", b"\x13", b"\x0e", b"\x23"])
def test_duplicate_extension_is_refused_cleanly(running: Running, kinds: AllKinds,
                                                oid: bytes) -> None:
    """Regression (found by the Check fuzz run): a certificate with two extensions of one type
    (one bit flipped in an extension OID) made cryptography raise DuplicateExtension (not a
    ValueError) when the extensions were first read: 503 internal_error, not 401."""
    der = kinds.leaf.cert.public_bytes(serialization.Encoding.DER)
    at = der.find(b"\x06\x03\x55\x1d" + oid)  # id-ce-<oid>
    if at < 0:
        pytest.skip("the leaf has no such extension")
    key_usage = b"\x06\x03\x55\x1d\x0f"
    assert key_usage in der and oid != b"\x0f"
    duplicated = der[:at] + key_usage + der[at + 5 :]  # a second keyUsage
    peer = quote(_der_to_pem(duplicated), safe="")
    assert _outcome(running, peer=peer) == "cert_invalid"


def test_every_single_bit_flip_of_a_certificate_is_refused_cleanly(
    running: Running, kinds: AllKinds
) -> None:
    """Exhaustive (about 4,200 certificates, ~1 s): every one-bit change of the valid leaf's DER
    is refused with an AuthenticationError — nothing else escapes. The one change that still
    verifies is the signature BIT STRING's unused-bits count (not covered by the signature;
    cryptography accepts a count the signature's trailing zero bits allow): the same signed
    content, so the same identity."""
    der = kinds.leaf.cert.public_bytes(serialization.Encoding.DER)
    unused_bits = len(kinds.leaf.cert.tbs_certificate_bytes) + 4 + 12 + 2  # see the docstring
    allowed: list[tuple[int, int]] = []
    for at in range(len(der)):
        for bit in range(8):
            flipped = bytearray(der)
            flipped[at] ^= 1 << bit
            outcome = _outcome(running, peer=quote(_der_to_pem(bytes(flipped)), safe=""))
            if outcome == "allow":
                allowed.append((at, bit))
    # which counts verify depends on how many trailing zero bits the signature happens to have
    assert all(at == unused_bits for at, _bit in allowed), allowed


@budget(200)
@given(st.text(max_size=300))
def test_random_peer_certificate_field(running: Running, peer: str) -> None:
    assert _outcome(running, peer=peer or "x") not in ("allow",)
