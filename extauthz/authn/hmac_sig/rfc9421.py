"""Profile ``rfc9421`` (default): RFC 9421 HTTP Message Signatures with ``hmac-sha256``.

``Signature-Input`` and ``Signature`` are RFC 8941 dictionaries keyed by label. Neither present =
no credential (``None``); one without the other, or anything unparsable = 401
``malformed_signature``. Checks, in order (cheap and secret-free first; the nonce last, so a
request that fails anything else never burns its nonce)::

    label     spec.label, else the first label of Signature-Input whose keyid is one of ours
              and, when spec.tag is set, whose tag is that tag (so a signature added by some
              other party, or for another application, is skipped, not fatal)
    shape     the input is an inner list of distinct strings; the signature a byte sequence;
              created/expires integers, keyid/nonce/alg/tag strings
    alg       if present, exactly "hmac-sha256" (else disallowed_algorithm); the key's
              algorithm is pinned to HMAC-SHA256 in any case
    key       keyid -> key (unknown_key)
    covered   every required component is covered (missing_component); require_digest adds
              content-digest. @request-target / @target-uri also satisfy @path and @query,
              @target-uri satisfies @authority and @scheme (they contain them).
    time      created required (unless require_created: false, then expires is required and
              bounded), with S = max_skew_seconds, A = max_age_seconds:
                  created > now + S                     signature_not_yet_valid
                  now > created + A + S                 signature_expired
                  now > expires + S                     signature_expired
    base      RFC 9421 §2.5 signature base; a covered header that is absent from the request
              is missing_component (never skipped)
    mac       HMAC-SHA256(secret, base) compared with hmac.compare_digest (bad_signature)
    digest    when content-digest, repr-digest (no content-coding) or a legacy Digest is
              covered (even one member): it must match the body
              (digest_mismatch), and that body must provably be the whole body: a body
              Envoy truncated is body_truncated, a request that may carry a body Envoy did
              not forward is body_not_forwarded (see extauthz.authn.digest.complete_body)
    nonce     when present (required with require_nonce): recorded per key until the end of
              the acceptance window; seen before = replayed
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from extauthz import sfv
from extauthz.authn.hmac_sig.checks import (
    ALGORITHM,
    MAX_COMPONENTS,
    MAX_HEADER_LENGTH,
    MAX_NONCE_LENGTH,
    Checks,
    HmacKey,
    missing,
)
from extauthz.authn.hmac_sig.components import ComponentError, sign, signature_base
from extauthz.errors import Reason
from extauthz.types import Identity, RequestView

_MALFORMED = Reason.MALFORMED_SIGNATURE

#: required component -> covered components that satisfy it (besides itself)
_IMPLIED: Mapping[str, frozenset[str]] = {
    "@path": frozenset({"@request-target", "@target-uri"}),
    "@query": frozenset({"@request-target", "@target-uri"}),
    "@request-target": frozenset({"@target-uri"}),
    "@authority": frozenset({"@target-uri"}),
    "@scheme": frozenset({"@target-uri"}),
}


def _is_string(value: object) -> bool:
    return isinstance(value, str) and not isinstance(value, sfv.Token)


class Rfc9421:
    """Verifies ``Signature-Input`` / ``Signature`` (module docstring: the exact rules)."""

    def __init__(self, checks: Checks) -> None:
        self._checks = checks
        self._fail = checks.fail
        self._spec = checks.spec

    async def verify(self, view: RequestView) -> Identity | None:
        """``None`` without signature headers, else the identity or a 401 / 503."""
        raw_input = view.headers.value("signature-input")
        raw_signature = view.headers.value("signature")
        if raw_input is None and raw_signature is None:
            return None
        inputs, signatures = self._parse(raw_input, raw_signature)
        label, inner, key = self._select(inputs, signatures)
        signature_item = signatures[label]
        if not isinstance(signature_item, sfv.Item) or not isinstance(signature_item.value, bytes):
            raise self._fail(_MALFORMED, "signature must be a byte sequence")
        created, expires, nonce = self._params(inner)
        covered, touched = self._covered(inner)
        absent = missing(self._checks.required, covered, _IMPLIED)
        if absent:
            raise self._fail(Reason.MISSING_COMPONENT, f"signature must cover {', '.join(absent)}")
        window = self._checks.check_time(created, expires)
        self._check_mac(view, inner, key, signature_item.value)
        self._checks.check_bodies(view, touched)
        if nonce is not None:
            await self._checks.remember_nonce(key, nonce, window)
        claims: dict[str, Any] = {
            "keyid": key.id,
            "label": label,
            "alg": ALGORITHM,
            "components": [item.value for item in inner.items],
        }
        if created is not None:
            claims["created"] = created
        if expires is not None:
            claims["expires"] = expires
        return self._checks.identity(key, claims, expires)

    def _parse(
        self, raw_input: str | None, raw_signature: str | None
    ) -> tuple[sfv.Dictionary, sfv.Dictionary]:
        if raw_input is None or raw_signature is None:
            raise self._fail(_MALFORMED, "Signature and Signature-Input needed")
        if len(raw_input) > MAX_HEADER_LENGTH or len(raw_signature) > MAX_HEADER_LENGTH:
            raise self._fail(_MALFORMED, "signature header too long")
        try:
            return sfv.parse_dictionary(raw_input), sfv.parse_dictionary(raw_signature)
        except sfv.ParseError as exc:
            raise self._fail(_MALFORMED, detail=str(exc)) from None

    def _check_mac(
        self, view: RequestView, inner: sfv.InnerList, key: HmacKey, presented: bytes
    ) -> None:
        try:
            base = signature_base(view, inner)
        except ComponentError as exc:
            raise self._fail(exc.reason, exc.description) from None
        except sfv.SerializeError:
            raise self._fail(_MALFORMED, "invalid signature parameters") from None
        if not hmac.compare_digest(sign(key.secret, base), presented):
            raise self._fail(Reason.BAD_SIGNATURE)

    # -- the signature to verify ---------------------------------------------------------------

    def _labels(self, inputs: sfv.Dictionary) -> list[str]:
        if self._spec.label is None:
            return list(inputs)
        if self._spec.label not in inputs:
            raise self._fail(_MALFORMED, "expected signature label absent")
        return [self._spec.label]

    def _select(
        self, inputs: sfv.Dictionary, signatures: sfv.Dictionary
    ) -> tuple[str, sfv.InnerList, HmacKey]:
        seen_keyid = False
        # RFC 9421 §2.3: the tag says which application a signature is for; with a configured
        # tag (and no label), signatures for other applications are skipped, not fatal
        by_tag = self._spec.tag is not None and self._spec.label is None
        seen_tag = False
        for label in self._labels(inputs):
            member = inputs[label]
            if not isinstance(member, sfv.InnerList):
                raise self._fail(_MALFORMED, "signature input is not a list")
            if by_tag:
                if member.params.get("tag") != self._spec.tag:
                    continue
                seen_tag = True
            keyid = member.params.get("keyid")
            if keyid is None:
                continue
            if not _is_string(keyid):
                raise self._fail(_MALFORMED, "keyid must be a string")
            seen_keyid = True
            key = self._checks.keys.get(str(keyid))
            if key is None:
                continue
            if label not in signatures:
                raise self._fail(_MALFORMED, "signature missing for its input")
            return label, member, key
        if seen_keyid:
            raise self._fail(Reason.UNKNOWN_KEY)
        if by_tag and not seen_tag:
            raise self._fail(_MALFORMED, "no signature with the expected tag")
        raise self._fail(_MALFORMED, "signature has no keyid")

    # -- signature parameters (one _validate_ per concern) --------------------------------------

    def _params(self, inner: sfv.InnerList) -> tuple[int | None, int | None, str | None]:
        """(created, expires, nonce) of a signature whose parameters pass every check."""
        params = inner.params
        self._validate_types(params)
        self._validate_alg(params.get("alg"))
        self._validate_tag(params.get("tag"))
        nonce = params.get("nonce")
        self._validate_nonce(nonce)
        created = params.get("created")
        self._validate_required(created, nonce)
        expires = params.get("expires")
        return (
            created if type(created) is int else None,
            expires if type(expires) is int else None,
            nonce if isinstance(nonce, str) else None,
        )

    def _validate_types(self, params: Mapping[str, sfv.BareItem]) -> None:
        for name in ("created", "expires"):
            value = params.get(name)
            if value is not None and (type(value) is not int or value < 0):
                raise self._fail(_MALFORMED, f"{name} must be an integer")
        for name in ("keyid", "nonce", "alg", "tag"):
            value = params.get(name)
            if value is not None and not _is_string(value):
                raise self._fail(_MALFORMED, f"{name} must be a string")

    def _validate_alg(self, alg: sfv.BareItem | None) -> None:
        if alg is not None and alg != ALGORITHM:
            raise self._fail(Reason.DISALLOWED_ALGORITHM)

    def _validate_tag(self, tag: sfv.BareItem | None) -> None:
        if self._spec.tag is not None and tag != self._spec.tag:
            raise self._fail(_MALFORMED, "signature tag not accepted")

    def _validate_nonce(self, nonce: sfv.BareItem | None) -> None:
        if nonce is not None and not 0 < len(str(nonce)) <= MAX_NONCE_LENGTH:
            raise self._fail(_MALFORMED, "invalid nonce")

    def _validate_required(self, created: sfv.BareItem | None,
                           nonce: sfv.BareItem | None) -> None:
        if self._spec.require_created and created is None:
            raise self._fail(_MALFORMED, "signature lacks created")
        if self._spec.require_nonce and nonce is None:
            raise self._fail(_MALFORMED, "signature lacks nonce")

    def _covered(self, inner: sfv.InnerList) -> tuple[set[str], set[str]]:
        """(components covered whole, names covered at all — also by a ``key`` member)."""
        if len(inner.items) > MAX_COMPONENTS:
            raise self._fail(_MALFORMED, "too many covered components")
        identifiers: set[str] = set()
        covered: set[str] = set()
        touched: set[str] = set()
        for item in inner.items:
            if not isinstance(item.value, str) or isinstance(item.value, sfv.Token):
                raise self._fail(_MALFORMED, "component identifiers must be strings")
            try:
                identifier = sfv.serialize_item(item)
            except sfv.SerializeError:
                raise self._fail(_MALFORMED, "invalid component") from None
            if identifier in identifiers:
                raise self._fail(_MALFORMED, "duplicate covered component")
            identifiers.add(identifier)
            touched.add(item.value)
            if "key" not in item.params:  # a dictionary member covers only part of the field
                covered.add(item.value)
        return covered, touched
