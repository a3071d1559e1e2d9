"""Reading ``x-forwarded-client-cert`` under an explicit trust model, so that no certificate can
move the element boundaries.

Why not a generic XFCC parser
-----------------------------
Envoy 1.40 writes ``URI=`` and ``DNS=`` values **unquoted** (verified; DESIGN.md §4). A client
whose certificate carries the SAN ``spiffe://a,Hash=...;Cert=<victim's PEM>;URI=...`` makes a
generic parser see one more element, built from a victim's (public) certificate. Counting elements
does not help on its own: the count changes with the SAN. So the elements are read the way Envoy
*wrote* them, from the first character, and the certificate decides how much text its own names
occupy:

Envoy's writer (``set_current_client_cert_details``), in this order, keys spelled exactly so::

    element = *( "By=" by ";" ) "Hash=" 64HEX [ ";Cert=" DQUOTE url-pem DQUOTE ]
              [ ";Chain=" DQUOTE url-pem DQUOTE ] [ ";Subject=" quoted ]
              [ ";URI=" ( uri *( ";URI=" uri ) / "" ) ] *( ";DNS=" dns )

* ``By`` (the proxy's own URI SANs) comes first and is the operator's proxy: it is read up to
  ``;`` and may not hold ``, ; "``.
* ``Cert``/``Chain`` are URL-encoded, so they hold no ``"``; ``Subject`` is RFC 2253 text in which
  ``"`` and ``\\`` are always escaped. Neither can end early.
* The ``URI``/``DNS`` tail is **not tokenized**: it must be, character for character, what Envoy
  writes for the SANs of the certificate in the same element's ``Cert`` (each URI SAN as
  ``;URI=value`` or ``;URI=`` when there is none; each DNS SAN as ``;DNS=value``). Whatever a SAN
  contains (``,`` ``;`` ``=`` ``"`` ``Cert=``...) is consumed as that SAN's text. An element without
  ``Cert`` has no such anchor; it is accepted only for a *proxy* element (its names are the
  operator's proxy's), with values that hold none of ``, ; = "``.
* After an element comes ``,`` (the next element) or the end of the header.

Because the outermost trusted proxy sanitizes (``SANITIZE_SET``), the header starts with the
client's element, and reading from the start is deterministic: there is exactly one way to read
the header, and it is Envoy's. The number of elements must then be exactly what the model says
(``XfccModel.elements``); anything else — a client-sent element that survived a misconfigured
proxy, a hop the model does not know, a name that does not match its certificate — is refused.

The trust model (configuration ``mtls.xfcc.proxies``) lists the ``forward_client_cert_details``
mode of every Envoy between the client and extauthz, outermost first:

* the first must be ``SANITIZE_SET`` (it terminated the client's TLS, dropped whatever XFCC the
  client sent and wrote the client's element);
* each later ``APPEND_FORWARD`` proxy appends the certificate *its* peer presented — the previous
  proxy's — as one more element;
* a later ``FORWARD_ONLY`` proxy passes the header on unchanged.

So the header has ``1 + number of APPEND_FORWARD hops`` elements and the client is the first one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from extauthz.authn.xfcc import MAX_XFCC_LENGTH
from extauthz.config.schema import XfccMode, model_problem

#: Characters that delimit XFCC syntax: never part of an unanchored value.
XFCC_DELIMITERS = frozenset(',;="\\')
#: Certificates read from one element's ``Chain`` at most.
MAX_CHAIN_CERTS = 16

_PEM_MARK = "-----BEGIN CERTIFICATE-----"
_HASH = re.compile(r"Hash=([0-9a-f]{64})")
_QUOTED_URL = re.compile(r'"([^"]*)"')
_QUOTED_ESCAPED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_PLAIN_VALUE = re.compile(r'[^,;="]*')
#: what cryptography raises for a malformed certificate (names and extensions parse lazily)
_X509_ERRORS = (ValueError, x509.InvalidVersion, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType)


class XfccMismatch(ValueError):
    """The header does not fit the trust model. The message is public-safe (no header text)."""


@dataclass(frozen=True, slots=True)
class TrustedElement:
    """One element, read as Envoy wrote it. ``cert`` is None only for a proxy element."""

    hash: str
    cert: x509.Certificate | None
    chain: tuple[x509.Certificate, ...]
    subject: str | None
    uris: tuple[str, ...]
    dns: tuple[str, ...]
    by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class XfccModel:
    """Which elements a header has and which one is the client (module docstring)."""

    proxies: tuple[XfccMode, ...] = ("SANITIZE_SET",)
    #: URI or DNS SANs that name the trusted proxies (required with more than one proxy): every
    #: proxy element, and the peer certificate behind two hops, must carry one of them
    proxy_identities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        problem = model_problem(self.proxies, bool(self.proxy_identities))
        if problem is not None:
            raise ValueError(problem)

    @property
    def elements(self) -> int:
        """How many elements a header must have: the edge's plus one per APPEND_FORWARD hop."""
        return 1 + sum(1 for mode in self.proxies[1:] if mode == "APPEND_FORWARD")

    @property
    def peer_is_client(self) -> bool:
        """Whether the TLS peer of the proxy nearest to extauthz is the client (one hop)."""
        return len(self.proxies) == 1

    @property
    def last_hop_appends(self) -> bool:
        """Whether the nearest proxy appended its own peer's certificate (the last element)."""
        return len(self.proxies) > 1 and self.proxies[-1] == "APPEND_FORWARD"

    def read(self, header: str) -> list[TrustedElement]:
        """Every element of ``header``, the client's first; raises :class:`XfccMismatch`."""
        if len(header) > MAX_XFCC_LENGTH:
            raise XfccMismatch(f"header longer than {MAX_XFCC_LENGTH} characters")
        out: list[TrustedElement] = []
        pos = 0
        while True:
            if len(out) == self.elements:
                # Whatever follows is an element the model does not account for.
                raise XfccMismatch(
                    f"more elements than the trust model's {self.elements}"
                )
            element, pos = _read_element(header, pos, client=not out)
            out.append(element)
            if pos == len(header):
                break
            pos += 1  # the "," _read_element stopped at
        if len(out) != self.elements:
            raise XfccMismatch(
                f"{len(out)} element(s) where the trust model expects {self.elements}"
            )
        return out

    def client(self, header: str, peer: x509.Certificate | None = None) -> TrustedElement:
        """The client's element (the first), after checking that the whole header fits the
        model and, with more than one proxy, that the proxies are the ones configured.

        ``peer`` is the TLS peer certificate of the nearest Envoy (when extauthz gets it).
        Behind more than one proxy it is a proxy: it must carry a proxy identity, and when the
        nearest proxy appends (``APPEND_FORWARD``) it must be the last element's certificate.
        A nearest ``FORWARD_ONLY`` proxy appends nothing, so the peer certificate is the only
        evidence of who connected to it: without one the header is refused.
        """
        elements = self.read(header)
        if self.peer_is_client:
            return elements[0]
        for element in elements[1:]:
            names = san_values(element.cert) if element.cert is not None else (
                element.uris, element.dns)
            if not self.proxy_identities.intersection(names[0] + names[1]):
                raise XfccMismatch("a proxy element does not name a configured proxy identity")
        if peer is None:
            if not self.last_hop_appends:
                raise XfccMismatch("the nearest proxy forwards without appending and no peer "
                                   "certificate shows who connected to it")
            return elements[0]
        uris, dns = san_values(peer)
        if not self.proxy_identities.intersection(uris + dns):
            raise XfccMismatch("the peer certificate does not name a configured proxy identity")
        digest = hashlib.sha256(peer.public_bytes(serialization.Encoding.DER)).hexdigest()
        if self.last_hop_appends and digest != elements[-1].hash:
            raise XfccMismatch("the last element is not the peer certificate")
        return elements[0]


# -- reading one element -----------------------------------------------------------------------


def _read_element(header: str, pos: int, *, client: bool) -> tuple[TrustedElement, int]:
    by: list[str] = []
    while header.startswith("By=", pos):
        value, pos = _plain(header, pos + 3, "By")
        by.append(value)
        pos = _expect(header, pos, ";")
    match = _HASH.match(header, pos)
    if match is None:
        raise XfccMismatch("an element does not start as Envoy writes it (Hash=)")
    digest = match.group(1)
    pos = match.end()
    cert: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    subject: str | None = None
    if header.startswith(";Cert=", pos):
        raw, pos = _quoted_url(header, pos + 6, "Cert")
        certs = _load(raw, "Cert")
        if len(certs) != 1:
            raise XfccMismatch("Cert must hold exactly one certificate")
        cert = certs[0]
        der = cert.public_bytes(serialization.Encoding.DER)
        if hashlib.sha256(der).hexdigest() != digest:
            raise XfccMismatch("Hash does not match Cert")
    elif client:
        raise XfccMismatch(
            "the client's element carries no Cert (enable cert in set_current_client_cert_details)"
        )
    if header.startswith(";Chain=", pos):
        raw, pos = _quoted_url(header, pos + 7, "Chain")
        chain = tuple(_load(raw, "Chain"))
        if len(chain) > MAX_CHAIN_CERTS:
            raise XfccMismatch(f"Chain holds more than {MAX_CHAIN_CERTS} certificates")
    if header.startswith(";Subject=", pos):
        match = _QUOTED_ESCAPED.match(header, pos + 9)
        if match is None:
            raise XfccMismatch("Subject is not a quoted string")
        subject = _UNESCAPE.sub(r"\1", match.group(1))
        pos = match.end()
    if cert is not None:
        uris, dns = san_values(cert)
        pos = _anchored_names(header, pos, uris, dns)
    else:
        uris_list: list[str] = []
        dns_list: list[str] = []
        while header.startswith(";URI=", pos):
            value, pos = _plain(header, pos + 5, "URI")
            if value:
                uris_list.append(value)
        while header.startswith(";DNS=", pos):
            value, pos = _plain(header, pos + 5, "DNS")
            dns_list.append(value)
        uris, dns = tuple(uris_list), tuple(dns_list)
    if pos != len(header) and header[pos] != ",":
        raise XfccMismatch("an element does not end as Envoy writes it")
    return TrustedElement(digest, cert, chain, subject, uris, dns, tuple(by)), pos


def _anchored_names(header: str, pos: int, uris: tuple[str, ...], dns: tuple[str, ...]) -> int:
    """Consume the URI/DNS pairs Envoy writes for these SANs, exactly; return the new position.

    Each group is optional (``uri``/``dns`` in ``set_current_client_cert_details``), but when
    present it must be the whole group, so a SAN's text never ends up outside its own value.
    """
    if header.startswith(";URI=", pos):
        expected = "".join(";URI=" + u for u in uris) if uris else ";URI="
        if not header.startswith(expected, pos):
            raise XfccMismatch("URI does not match the certificate's URI SANs")
        pos += len(expected)
    if header.startswith(";DNS=", pos):
        expected = "".join(";DNS=" + d for d in dns)
        if not expected or not header.startswith(expected, pos):
            raise XfccMismatch("DNS does not match the certificate's DNS SANs")
        pos += len(expected)
    return pos


def san_values(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(URI SANs, DNS SANs) of ``cert`` as Envoy renders them; raises XfccMismatch if unreadable."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    except _X509_ERRORS:
        raise XfccMismatch("the certificate's subjectAltName cannot be read") from None
    return (tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            tuple(san.get_values_for_type(x509.DNSName)))


def _plain(header: str, pos: int, key: str) -> tuple[str, int]:
    match = _PLAIN_VALUE.match(header, pos)
    assert match is not None  # the pattern matches the empty string
    end = match.end()
    if end < len(header) and header[end] not in ",;":
        raise XfccMismatch(f"{key} holds a character XFCC cannot carry unquoted")
    return match.group(0), end


def _quoted_url(header: str, pos: int, key: str) -> tuple[str, int]:
    match = _QUOTED_URL.match(header, pos)
    if match is None:
        raise XfccMismatch(f"{key} is not a quoted URL-encoded value")
    return match.group(1), match.end()


def _expect(header: str, pos: int, char: str) -> int:
    if not header.startswith(char, pos):
        raise XfccMismatch("an element does not continue as Envoy writes it")
    return pos + 1


def _load(encoded: str, key: str) -> list[x509.Certificate]:
    try:
        text = unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise XfccMismatch(f"{key} is not URL-encoded UTF-8") from None
    if _PEM_MARK not in text:
        raise XfccMismatch(f"{key} is not a URL-encoded PEM certificate")
    try:
        return x509.load_pem_x509_certificates(text.encode("utf-8"))
    except _X509_ERRORS:
        raise XfccMismatch(f"{key} is not a readable certificate") from None


def has_delimiters(values: Sequence[str]) -> bool:
    """Whether any value holds an XFCC delimiter or a control/space character."""
    return any(
        any(c in XFCC_DELIMITERS or ord(c) <= 0x20 or ord(c) == 0x7F for c in v) for v in values
    )
