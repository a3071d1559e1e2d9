"""A client-side HTTP request signer for the tests: RFC 9421 ``hmac-sha256``, RFC 9530 digests and
the draft-cavage ``Signature`` scheme (Kong / APISIX ``hmac-auth`` clients).

Written from the RFCs, deliberately **without** importing anything from ``extauthz`` (not its
signature base, not its structured-field serializer, not its digest helpers): a test that signs
with the verifier's own code proves only that the code agrees with itself. The RFC 9421 part is
checked against the specification's own known answer (Appendix B.2.5) in
``tests/e2e/test_e2e_hmac.py``.

What a client signs is what it *sends*: the method, the ``Host`` it writes, the path and query it
puts on the request line, the header fields it adds. Where Envoy changes any of these before
extauthz sees them (path normalization, header joining), the signature stops verifying — the
end-to-end tests pin exactly those cases.

RFC 9421 component values (§2.1, §2.2):

``@method``          the method as sent
``@authority``       the authority, lowercased, the scheme's default port removed
``@scheme``          lowercased
``@path``            the path as sent ("/" when empty)
``@query``           ``?`` + the raw query as sent; ``?`` alone when there is none
``@request-target``  path + (``?query`` when there is one)
``@target-uri``      scheme://authority + request target
``name``             every line of field ``name`` with surrounding whitespace removed, joined
                     with ``", "``
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: RFC 9421 Appendix B.1.4: the shared secret of the ``hmac-sha256`` examples (base64).
RFC9421_TEST_SHARED_SECRET_B64 = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
ALG = "hmac-sha256"
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


# -- RFC 8941 serialization (only what a signer needs) --------------------------------------------


def sf_string(value: str) -> str:
    """An RFC 8941 sf-string: printable ASCII in double quotes, ``"`` and ``\\`` escaped."""
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in value):
        raise ValueError(f"not an sf-string: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sf_bytes(value: bytes) -> str:
    """An RFC 8941 byte sequence: ``:base64:``."""
    return ":" + base64.b64encode(value).decode("ascii") + ":"


def _sf_param(name: str, value: str | int) -> str:
    if isinstance(value, bool):
        raise TypeError(name)
    if isinstance(value, int):
        return f";{name}={value}"
    return f";{name}={sf_string(value)}"


# -- digests (RFC 9530 Content-Digest, RFC 3230 Digest) -------------------------------------------


def content_digest(body: bytes, algorithms: Sequence[str] = ("sha-256",)) -> str:
    """``Content-Digest`` for ``body``: ``sha-256=:<base64>:`` (members joined with ``, ``)."""
    return ", ".join(f"{alg}={sf_bytes(_DIGESTS[alg](body).digest())}" for alg in algorithms)


def legacy_digest(body: bytes) -> str:
    """RFC 3230 ``Digest`` for ``body`` as draft-cavage clients send it: ``SHA-256=<base64>``."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


# -- the message a client sends -------------------------------------------------------------------


def normalize_authority(authority: str, scheme: str = "http") -> str:
    """RFC 9421 §2.2.3: lowercase, without the scheme's default port."""
    value = authority.strip().lower()
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default and value.endswith(":" + default) and not value.endswith("]"):
        value = value[: -len(default) - 1]
    return value


@dataclass(frozen=True)
class Message:
    """An HTTP request as the client writes it on the wire."""

    method: str
    authority: str  # the Host header value the client sends
    target: str  # the request target: path, optionally ``?query``
    headers: Sequence[tuple[str, str]] = ()
    scheme: str = "http"

    @property
    def path(self) -> str:
        return self.target.partition("?")[0] or "/"

    @property
    def query(self) -> str | None:
        """The raw query (without ``?``), or None when the target has no ``?``."""
        _, sep, query = self.target.partition("?")
        return query if sep else None

    def field_value(self, name: str) -> str | None:
        """RFC 9421 §2.1: every line of ``name``, trimmed, joined with ``", "``; None if absent."""
        lname = name.lower()
        if lname == "host":
            return self.authority.strip()
        values = [v.strip(" \t") for k, v in self.headers if k.lower() == lname]
        return ", ".join(values) if values else None

    def derived(self, name: str) -> str:
        if name == "@method":
            return self.method
        if name == "@authority":
            return normalize_authority(self.authority, self.scheme)
        if name == "@scheme":
            return self.scheme.lower()
        if name == "@path":
            return self.path
        if name == "@query":
            return "?" + (self.query or "")
        if name == "@request-target":
            return self.path + (f"?{self.query}" if self.query else "")
        if name == "@target-uri":
            return (
                f"{self.scheme.lower()}://{normalize_authority(self.authority, self.scheme)}"
                f"{self.derived('@request-target')}"
            )
        raise ValueError(f"derived component {name} not supported by the test signer")


# -- RFC 9421 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureInput:
    """The covered components and parameters of one RFC 9421 signature."""

    components: Sequence[str]
    created: int | None = None
    expires: int | None = None
    nonce: str | None = None
    alg: str | None = None
    keyid: str | None = None
    tag: str | None = None
    #: extra parameters (name, value) appended after the standard ones, in order
    extra: Sequence[tuple[str, str | int]] = field(default_factory=tuple)

    def serialize(self) -> str:
        """The inner list with its parameters (``@signature-params`` value and header member).

        Parameter order: created, expires, nonce, alg, keyid, tag, extra — any order is valid,
        and the verifier must reproduce whatever order was sent.
        """
        items = " ".join(sf_string(c) for c in self.components)
        params = ""
        for name in ("created", "expires", "nonce", "alg", "keyid", "tag"):
            value = getattr(self, name)
            if value is not None:
                params += _sf_param(name, value)
        for name, value in self.extra:
            params += _sf_param(name, value)
        return f"({items}){params}"


def signature_base(message: Message, signature_input: SignatureInput) -> str:
    """RFC 9421 §2.5: one ``"name": value`` line per component, then ``@signature-params``."""
    lines = []
    for component in signature_input.components:
        if component.startswith("@"):
            value = message.derived(component)
        else:
            found = message.field_value(component)
            if found is None:
                raise ValueError(f"the message has no field {component}")
            value = found
        lines.append(f"{sf_string(component)}: {value}")
    lines.append(f'"@signature-params": {signature_input.serialize()}')
    return "\n".join(lines)


def hmac_sha256(secret: bytes, text: str) -> bytes:
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).digest()


def sign_rfc9421(
    message: Message, signature_input: SignatureInput, secret: bytes, *, label: str = "sig1"
) -> list[tuple[str, str]]:
    """The ``Signature-Input`` and ``Signature`` header fields for ``message``."""
    signature = hmac_sha256(secret, signature_base(message, signature_input))
    return [
        ("Signature-Input", f"{label}={signature_input.serialize()}"),
        ("Signature", f"{label}={sf_bytes(signature)}"),
    ]


# -- draft-cavage ---------------------------------------------------------------------------------


def cavage_signing_string(
    message: Message,
    names: Iterable[str],
    *,
    created: int | None = None,
    expires: int | None = None,
    protocol: str = "HTTP/1.1",
) -> str:
    """draft-cavage-http-signatures-12 §2.3 (plus Kong's ``request-line``): one line per name."""
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {message.method.lower()} {message.target}")
        elif name == "request-line":
            lines.append(f"{message.method.upper()} {message.target} {protocol}")
        elif name == "(created)":
            lines.append(f"(created): {created}")
        elif name == "(expires)":
            lines.append(f"(expires): {expires}")
        else:
            value = message.field_value(name)
            if value is None:
                raise ValueError(f"the message has no field {name}")
            lines.append(f"{name.lower()}: {value}")
    return "\n".join(lines)


def cavage_authorization(
    message: Message,
    names: Sequence[str],
    *,
    key_id: str,
    secret: bytes,
    algorithm: str = ALG,
    scheme: str = "Signature",
    key_param: str = "keyId",
    created: int | None = None,
    expires: int | None = None,
) -> str:
    """``Authorization: Signature keyId="…",algorithm="…",headers="…",signature="…"``."""
    text = cavage_signing_string(message, names, created=created, expires=expires)
    signature = base64.b64encode(hmac_sha256(secret, text)).decode("ascii")
    params = [f'{key_param}="{key_id}"', f'algorithm="{algorithm}"']
    if created is not None:
        params.append(f"created={created}")
    if expires is not None:
        params.append(f"expires={expires}")
    params += [f'headers="{" ".join(names)}"', f'signature="{signature}"']
    return f"{scheme} " + ",".join(params)
