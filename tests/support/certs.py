"""A throw-away PKI for tests: root and intermediate CAs, client certificates, Envoy encodings.

Everything is generated in memory with ``cryptography`` (EC P-256 keys: fast to make). Unit tests
pass a fixed ``now``; end-to-end tests can use the default (the real time) and
:meth:`TestCA.write_bundle` to give Envoy and extauthz the same trust bundle::

    ca = TestCA.create("e2e root")
    client = ca.issue(uris=["spiffe://example.org/ns/orders/sa/api"])
    ca.write_bundle(tmp_path / "ca.pem")
    client.write(tmp_path / "client.pem", tmp_path / "client.key")
    header = xfcc_for(client, chain=[client, ca.issued])   # x-forwarded-client-cert value
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
DAY = 86400.0


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "extauthz tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def sha256_hex(self) -> str:
        """What Envoy puts in XFCC ``Hash``: hex SHA-256 of the DER."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        cert_path.write_text(self.pem)
        if key_path is not None:
            key_path.write_text(self.key_pem)
            key_path.chmod(0o600)


@dataclass(frozen=True)
class TestCA:
    """A certificate authority (root when ``parent`` is None, else an intermediate)."""

    __test__ = False  # not a pytest test class

    issued: Issued
    parent: TestCA | None = None

    @classmethod
    def create(
        cls,
        name: str = "extauthz test root",
        *,
        now: float | None = None,
        not_before: float | None = None,
        not_after: float | None = None,
    ) -> TestCA:
        """A self-signed root CA valid from a day before ``now`` for ten years."""
        now = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - DAY if not_before is None else not_before))
            .not_valid_after(_utc(now + 3650 * DAY if not_after is None else not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
        )
        return cls(Issued(builder.sign(key, hashes.SHA256()), key))

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.cert

    @property
    def pem(self) -> str:
        return self.issued.pem

    def intermediate(
        self,
        name: str = "extauthz test intermediate",
        *,
        now: float | None = None,
        not_before: float | None = None,
        not_after: float | None = None,
    ) -> TestCA:
        """An intermediate CA signed by this CA."""
        now = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(key, _name(name), now, not_before, 1825 * DAY, not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
        )
        return TestCA(Issued(builder.sign(self.issued.key, hashes.SHA256()), key), parent=self)

    def issue(
        self,
        common_name: str = "client",
        *,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        now: float | None = None,
        not_before: float | None = None,
        not_after: float | None = None,
        eku: Sequence[x509.ObjectIdentifier] | None = (CLIENT_AUTH,),
        ca: bool = False,
        san: bool = True,
    ) -> Issued:
        """A leaf certificate (``eku=None`` omits the extension; ``ca=True`` makes a bad leaf)."""
        now = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(key, _name(common_name), now, not_before, 30 * DAY, not_after)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        if san and names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if ca:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=None), critical=True
            ).add_extension(_ca_key_usage(), critical=True)
        else:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            ).add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        return Issued(builder.sign(self.issued.key, hashes.SHA256()), key)

    def chain_pem(self) -> str:
        """This CA and its parents (not the root), leaf-most first: the intermediates to send."""
        out: list[str] = []
        ca: TestCA | None = self
        while ca is not None and ca.parent is not None:
            out.append(ca.pem)
            ca = ca.parent
        return "".join(out)

    def root(self) -> TestCA:
        ca = self
        while ca.parent is not None:
            ca = ca.parent
        return ca

    def write_bundle(self, path: Path) -> Path:
        """Write this CA's root as a PEM trust bundle."""
        path.write_text(self.root().pem)
        return path

    def _builder(
        self,
        key: ec.EllipticCurvePrivateKey,
        subject: x509.Name,
        now: float,
        not_before: float | None,
        lifetime: float | None,
        not_after: float | None,
    ) -> x509.CertificateBuilder:
        start = now - DAY if not_before is None else not_before
        end = not_after if not_after is not None else now + (lifetime or 30 * DAY)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issued.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(start))
            .not_valid_after(_utc(end))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issued.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
        )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def url_encode(pem: str) -> str:
    """URL-encode a PEM the way Envoy does for ``source.certificate`` and XFCC ``Cert``."""
    return quote(pem, safe="")


def xfcc_for(
    leaf: Issued | None,
    *,
    chain: Sequence[Issued | TestCA] = (),
    by: str | None = "spiffe://example.org/ns/edge/sa/envoy",
    uri: str | None = None,
    dns: Sequence[str] | None = None,
    subject: str | None = None,
    with_hash: bool = True,
    names_from_cert: bool = True,
) -> str:
    """One XFCC element as Envoy's ``SANITIZE_SET`` writes it (verified against Envoy 1.40):
    ``By=...;Hash=...;Cert="...";Chain="...";Subject="...";URI=...;DNS=...`` with Cert/Chain
    URL-encoded and quoted, Subject quoted, URI/DNS unquoted.

    ``uri``/``dns`` override the names; by default (``names_from_cert``) they are the leaf's own
    SANs as Envoy writes them (``URI=`` when there is no URI SAN, no DNS pair without a DNS SAN).
    """
    pairs: list[str] = []
    if by is not None:
        pairs.append(f"By={by}")
    if leaf is not None and with_hash:
        pairs.append(f"Hash={leaf.sha256_hex}")
    if leaf is not None:
        pairs.append(f'Cert="{url_encode(leaf.pem)}"')
    if chain:
        pairs.append('Chain="' + url_encode("".join(c.pem for c in chain)) + '"')
    if subject is not None:
        pairs.append('Subject="' + subject.replace("\\", "\\\\").replace('"', '\\"') + '"')
    uris: list[str] = [uri] if uri is not None else []
    dns_names: list[str] = list(dns) if dns is not None else []
    if leaf is not None and names_from_cert and uri is None and dns is None:
        uris, dns_names = san_names(leaf.cert)
        pairs.append("URI=" if not uris else ";".join(f"URI={u}" for u in uris))
    elif uri is not None:
        pairs.append(f"URI={uri}")
    pairs.extend(f"DNS={d}" for d in dns_names)
    return ";".join(pairs)


def san_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(URI SANs, DNS SANs) of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (list(san.get_values_for_type(x509.UniformResourceIdentifier)),
            list(san.get_values_for_type(x509.DNSName)))
