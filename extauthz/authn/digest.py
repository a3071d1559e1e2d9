"""Body integrity: RFC 9530 ``Content-Digest`` and the legacy RFC 3230 ``Digest`` header.

``Content-Digest`` is an RFC 8941 Dictionary whose members are byte sequences keyed by algorithm
(``sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:``). ``Digest`` (used by clients of the
draft-cavage signature scheme) is ``SHA-256=<base64>`` entries separated by commas, with
case-insensitive algorithm names.

Verification rules (the same for both headers):

* only ``sha-256`` and ``sha-512`` are supported (a caller may accept a subset); other algorithms
  in the header (``md5``, ``sha``, ``unixsum``, ...) are ignored, as RFC 9530 §2 allows;
* at least one accepted algorithm must be present, and **every** accepted algorithm present must
  match the body (a correct SHA-256 does not excuse a wrong SHA-512);
* digests are compared with :func:`hmac.compare_digest`.

The body is what Envoy forwarded (``with_request_body``), and a digest is checked only against a
body that is provably the *whole* body the upstream will receive (:func:`complete_body`). What
Envoy 1.40 tells us (verified through the shipped configurations, both transports):

* Envoy adds ``x-envoy-auth-partial-body`` only when it buffered body data for the check
  (``false``: the whole body, ``true``: the first ``max_request_bytes``); a client-sent value of
  that header never reaches extauthz;
* a request without body data (a bodyless GET, or any request when ``with_request_body`` is off or
  disabled on the route) comes without that header; ``transfer-encoding`` is never forwarded, so
  a chunked body Envoy did not buffer leaves **no trace at all** (no ``content-length`` either):
  it is indistinguishable from no body;
* over gRPC ``content-length`` is the client's; over the HTTP transport it describes the check
  request Envoy sends (the forwarded bytes), so the HTTP transport drops it when Envoy forwarded
  no body (:mod:`extauthz.http_authz`).

So: flag ``true`` -> :class:`BodyTruncated`; body bytes with flag ``false`` -> the body, if
``content-length`` (when present) agrees; no body bytes -> the empty body only when the client
declared ``content-length: 0`` (over gRPC; the HTTP transport cannot see it), else
:class:`BodyNotForwarded`: the body may exist and was not seen.

Every failure raises :class:`DigestError`, whose message is public-safe.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Collection, Mapping

from extauthz import sfv

#: algorithm name (RFC 9530 registry, lowercase) -> hashlib name
ALGORITHMS: Mapping[str, str] = {"sha-256": "sha256", "sha-512": "sha512"}
DEFAULT_ALGORITHMS: tuple[str, ...] = ("sha-256", "sha-512")

#: the header Envoy adds when it forwards a body to the authorization server
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"

#: longer digest headers are refused before parsing
MAX_HEADER_LENGTH = 4096


class DigestError(ValueError):
    """The digest header is malformed, uses no accepted algorithm, or does not match the body."""


class BodyTruncated(DigestError):
    """Envoy forwarded only the first part of the body (``x-envoy-auth-partial-body: true``) or
    fewer bytes than ``content-length`` announces."""


class BodyNotForwarded(DigestError):
    """The request may carry a body that extauthz did not receive, so no digest can vouch for it."""


def _hash(algorithm: str, body: bytes) -> bytes:
    return hashlib.new(ALGORITHMS[algorithm], body).digest()


def is_partial_body(headers: Mapping[str, str]) -> bool:
    """True when Envoy says the body it forwarded is truncated."""
    value = headers.get(PARTIAL_BODY_HEADER)
    return isinstance(value, str) and value.strip().lower() == "true"


def complete_body(headers: Mapping[str, str], body: bytes) -> bytes:
    """``body`` when it is provably the whole request body (see the module docstring).

    Raises :class:`BodyTruncated` or :class:`BodyNotForwarded` on any sign that a body exists
    but was not forwarded whole. ``headers`` are the request's (lowercase names).
    """
    flag = headers.get(PARTIAL_BODY_HEADER)
    length = headers.get("content-length")
    if headers.get("transfer-encoding") is not None:
        # Envoy never forwards it; if a header says the body is framed some other way, the
        # forwarded bytes cannot be matched to it.
        raise BodyNotForwarded("request body framing unknown")
    state = flag.strip().lower() if flag is not None else None
    if state == "true":
        raise BodyTruncated("body truncated")
    if body:
        if state != "false":  # body bytes without Envoy's flag: not what Envoy sends
            raise BodyNotForwarded("request body not forwarded")
        if length is not None and length.strip() != str(len(body)):
            raise BodyTruncated("body incomplete")
        return body
    # No body bytes. Envoy sends its flag only after buffering body data, but whether a client
    # copy of the flag is stripped depends on Envoy's edge settings: the flag alone never proves
    # "empty". Only the client's own content-length: 0 does (a chunked body leaves no trace).
    if length is not None and length.strip() == "0":
        return b""
    raise BodyNotForwarded("request body not forwarded")


def parse_content_digest(value: str) -> dict[str, bytes]:
    """``Content-Digest`` -> {algorithm: digest}; ``DigestError`` if it is not a valid one."""
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError("content-digest header too long")
    try:
        members = sfv.parse_dictionary(value)
    except sfv.ParseError:
        raise DigestError("malformed content-digest header") from None
    out: dict[str, bytes] = {}
    for alg, member in members.items():
        if not isinstance(member, sfv.Item) or not isinstance(member.value, bytes):
            raise DigestError("malformed content-digest header")
        out[alg] = member.value
    return out


def parse_legacy_digest(value: str) -> dict[str, bytes]:
    """RFC 3230 ``Digest`` -> {algorithm (lowercased): digest}; only base64 values are read."""
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError("digest header too long")
    out: dict[str, bytes] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        alg, sep, encoded = part.partition("=")
        alg = alg.strip().lower()
        if not sep or not alg:
            raise DigestError("malformed digest header")
        if alg not in ALGORITHMS:
            continue  # unknown or unsupported algorithm: ignored
        try:
            out[alg] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise DigestError("malformed digest header") from None
    return out


def _verify(digests: Mapping[str, bytes], body: bytes, accepted: Collection[str]) -> str:
    usable = [(alg, d) for alg, d in digests.items() if alg in accepted and alg in ALGORITHMS]
    if not usable:
        raise DigestError("no accepted digest algorithm")
    for alg, presented in usable:
        if not hmac.compare_digest(_hash(alg, body), presented):
            raise DigestError("content digest mismatch")
    return usable[0][0]


def verify_content_digest(
    value: str, body: bytes, accepted: Collection[str] = DEFAULT_ALGORITHMS
) -> str:
    """Check a ``Content-Digest`` value against ``body``; returns the first algorithm checked."""
    return _verify(parse_content_digest(value), body, accepted)


def verify_legacy_digest(
    value: str, body: bytes, accepted: Collection[str] = DEFAULT_ALGORITHMS
) -> str:
    """Check a legacy ``Digest`` value against ``body``; returns the first algorithm checked."""
    return _verify(parse_legacy_digest(value), body, accepted)


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The ``Content-Digest`` value for ``body`` (for clients and tests)."""
    digest = _hash(algorithm, body)
    return sfv.serialize_dictionary({algorithm: sfv.Item(digest)})


def legacy_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The legacy ``Digest`` value for ``body``, e.g. ``SHA-256=<base64>``."""
    digest = _hash(algorithm, body)
    return f"{algorithm.upper()}={base64.b64encode(digest).decode('ascii')}"
