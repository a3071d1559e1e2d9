"""Profile ``cavage``: the draft-cavage signatures of Kong's and APISIX's ``hmac-auth``.

``Authorization: Signature keyId="...", algorithm="hmac-sha256",headers="...",signature="<base64>"``
(scheme ``hmac`` and ``username`` instead of ``keyId`` also accepted, as Kong sends them), or the
same parameters in a ``Signature`` header. The signing string is built from the ``headers`` list:

    ``(request-target)``  ``(request-target): get /path?query``      (draft-cavage)
    ``@request-target``   ``GET /path?query``                        (dialects draft, apisix)
    ``@request-target``   ``@request-target: get /path?query``       (dialect kong, or
                          Kong's ``hmac`` scheme under dialect draft)
    ``request-line``      ``GET /path?query HTTP/1.1``               (Kong)
    ``(created)``, ``(expires)``  the ``created`` / ``expires`` parameters
    ``name``              ``name: value``; the name lowercased (dialect draft) or as the
                          client listed it (``Date: ...``, dialects kong and apisix, and
                          Kong's ``hmac`` scheme)

joined with ``\\n``; dialect ``apisix`` prefixes the key id as the first line and ends every
line with ``\\n``. Unlike those plugins: the comparison is constant-time; ``headers`` is required
and every listed header must be present (never skipped); the time checks use only a *signed* time
(``(created)``, else a covered ``date`` / ``x-date``); a body digest (``Digest: SHA-256=<b64>`` or
``Content-Digest``) is checked only when covered by the signature, and ``require_digest`` requires
it to be covered; ``algorithm`` must be ``hmac-sha256`` (or ``hs2019``, "as the key says").
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from extauthz.authn.hmac_sig.checks import (
    ALGORITHM,
    MAX_COMPONENTS,
    MAX_HEADER_LENGTH,
    Checks,
    HmacKey,
)
from extauthz.authn.hmac_sig.components import FIELD_NAME, field, method, request_target, sign
from extauthz.errors import Reason
from extauthz.types import Identity, RequestView

_MALFORMED = Reason.MALFORMED_SIGNATURE
_REQUEST_TARGETS = frozenset({"(request-target)", "@request-target", "request-line"})
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|\Z)')
#: required component -> covered names that satisfy it (besides itself)
_IMPLIED: Mapping[str, frozenset[str]] = {
    "@method": _REQUEST_TARGETS,
    "@path": _REQUEST_TARGETS,
    "@query": _REQUEST_TARGETS,
    "@request-target": _REQUEST_TARGETS,
    "@authority": frozenset({"host"}),
    "content-digest": frozenset({"content-digest", "digest"}),
}


def _covers(name: str, covered: set[str]) -> bool:
    if name == "@target-uri":  # no cavage name: a request target and the host together
        return bool(covered & _REQUEST_TARGETS) and "host" in covered
    return name in covered or bool(covered & _IMPLIED.get(name, frozenset()))


def _missing(required: tuple[str, ...], covered: set[str]) -> list[str]:
    return [name for name in required if not _covers(name, covered)]


def _http_version(view: RequestView) -> str:
    """The request-line version as nginx (Kong) renders it: ``HTTP/1.1``, ``HTTP/2.0``."""
    protocol = (view.protocol or "HTTP/1.1").upper()
    if protocol in ("HTTP/2", "HTTP/3"):
        return protocol + ".0"
    return protocol


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 15:  # not "²" or "٣"
        raise ValueError(name)
    return int(value)


class Cavage:
    """Verifies draft-cavage signatures (module docstring: the exact rules)."""

    def __init__(self, checks: Checks) -> None:
        self._checks = checks
        self._fail = checks.fail
        self._dialect = checks.spec.dialect

    async def verify(self, view: RequestView) -> Identity | None:
        """``None`` without a signature, else the identity or a 401."""
        found = self._signature_params(view)
        if found is None:
            return None
        params, kong_scheme = found
        # Kong's signing string: dialect kong, or its own `hmac` scheme under dialect draft
        # (no other client sends that scheme, so it says which signing string was used)
        kong = self._dialect == "kong" or (self._dialect == "draft" and kong_scheme)
        signature_b64 = params.get("signature")
        if not signature_b64:
            raise self._fail(_MALFORMED, "signature parameter missing")
        self._validate_algorithm(params.get("algorithm"))
        key = self._key(params)
        spelled = self._listed(params)
        names = [n.lower() for n in spelled]
        covered = set(names)
        absent = _missing(self._checks.required, covered)
        if absent:
            raise self._fail(Reason.MISSING_COMPONENT, f"signature must cover {', '.join(absent)}")
        created, expires = self._times(params)
        signed_created, signed_expires = self._signed_times(view, covered, created, expires)
        self._checks.check_time(signed_created, signed_expires)
        lines = [self._line(view, n, created, expires, kong) for n in spelled]
        self._check_mac(self._signing_string(key, lines), signature_b64, key)
        self._checks.check_bodies(view, covered)
        claims: dict[str, Any] = {
            "keyid": key.id,
            "alg": ALGORITHM,
            "components": names,
            "created": signed_created,
        }
        if signed_expires is not None:
            claims["expires"] = signed_expires
        return self._checks.identity(key, claims, signed_expires)

    # -- the parameters ------------------------------------------------------------------------

    def _signature_params(self, view: RequestView) -> tuple[dict[str, str], bool] | None:
        """The signature parameters, and whether they came in Kong's ``hmac`` scheme."""
        raw = view.headers.value("authorization")
        text: str | None = None
        kong_scheme = False
        if raw is not None:
            scheme, _, rest = raw.strip().partition(" ")
            if scheme.lower() in ("signature", "hmac"):
                text = rest
                kong_scheme = scheme.lower() == "hmac"
        if text is None:
            text = view.headers.value("signature")
        if text is None:
            return None
        if len(text) > MAX_HEADER_LENGTH:
            raise self._fail(_MALFORMED, "signature header too long")
        return self._parse_auth_params(text.strip()), kong_scheme

    def _parse_auth_params(self, text: str) -> dict[str, str]:
        params: dict[str, str] = {}
        pos = 0
        while pos < len(text):
            match = _PARAM.match(text, pos)
            if match is None or match.end() == pos:
                raise self._fail(_MALFORMED, "malformed signature parameters")
            name, value = match.group(1), match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name in params:
                raise self._fail(_MALFORMED, f"duplicate parameter {name}")
            params[name] = value
            pos = match.end()
        return params

    def _validate_algorithm(self, algorithm: str | None) -> None:
        if algorithm is not None and algorithm.lower() not in (ALGORITHM, "hs2019"):
            raise self._fail(Reason.DISALLOWED_ALGORITHM)

    def _key(self, params: Mapping[str, str]) -> HmacKey:
        key_id = params.get("keyId")
        username = params.get("username")
        if key_id is not None and username is not None and key_id != username:
            raise self._fail(_MALFORMED, "keyId and username differ")
        key_id = key_id if key_id is not None else username
        if not key_id:
            raise self._fail(_MALFORMED, "signature has no keyId")
        key = self._checks.keys.get(key_id)
        if key is None:
            raise self._fail(Reason.UNKNOWN_KEY)
        return key

    def _listed(self, params: Mapping[str, str]) -> list[str]:
        """The ``headers`` list as the client spelled it: required, bounded, distinct."""
        listed = params.get("headers")
        if listed is None or not listed.strip():
            raise self._fail(_MALFORMED, "headers parameter required")
        spelled = listed.split()
        names = {n.lower() for n in spelled}
        if len(spelled) > MAX_COMPONENTS or len(names) != len(spelled):
            raise self._fail(_MALFORMED, "invalid headers parameter")
        return spelled

    # -- time ----------------------------------------------------------------------------------

    def _times(self, params: Mapping[str, str]) -> tuple[int | None, int | None]:
        try:
            return _int_param(params, "created"), _int_param(params, "expires")
        except ValueError as exc:
            raise self._fail(_MALFORMED, f"{exc} must be an integer") from None

    def _signed_times(
        self, view: RequestView, covered: set[str], created: int | None, expires: int | None
    ) -> tuple[int | None, int | None]:
        """Only a signed time counts: (created), else a covered Date / X-Date."""
        if "(created)" in covered:
            signed_created = created
        elif "date" in covered:
            signed_created = self._http_date(view, "date")
        elif "x-date" in covered:
            signed_created = self._http_date(view, "x-date")
        else:
            raise self._fail(
                Reason.MISSING_COMPONENT, "signature must cover date, x-date or (created)"
            )
        return signed_created, expires if "(expires)" in covered else None

    def _http_date(self, view: RequestView, name: str) -> int:
        value = field(view.headers, name)
        if value is None:
            raise self._fail(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise self._fail(_MALFORMED, f"invalid {name} header") from None
        if parsed.tzinfo is None:
            raise self._fail(_MALFORMED, f"invalid {name} header")
        return int(parsed.timestamp())

    # -- the signing string --------------------------------------------------------------------

    def _line(
        self, view: RequestView, spelled: str, created: int | None, expires: int | None,
        kong: bool,
    ) -> str:
        name = spelled.lower()
        if name == "(request-target)":
            return f"(request-target): {method(view).lower()} {request_target(view)}"
        if name == "@request-target":
            if kong:
                return f"@request-target: {method(view).lower()} {request_target(view)}"
            return f"{method(view).upper()} {request_target(view)}"
        if name == "request-line":
            return f"{method(view).upper()} {request_target(view)} {_http_version(view)}"
        if name in ("(created)", "(expires)"):
            number = created if name == "(created)" else expires
            if number is None:
                raise self._fail(_MALFORMED, f"{name} covered but not given")
            return f"{name}: {number}"
        if not FIELD_NAME.match(name):
            raise self._fail(_MALFORMED, "invalid header name in headers")
        value = field(view.headers, name)
        if value is None:
            raise self._fail(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
        # draft-cavage lowercases the name; Kong and APISIX write it as the client listed it
        shown = spelled if kong or self._dialect == "apisix" else name
        return f"{shown}: {value}"

    def _signing_string(self, key: HmacKey, lines: list[str]) -> str:
        if self._dialect == "apisix":
            return "\n".join([key.id, *lines]) + "\n"
        return "\n".join(lines)

    def _check_mac(self, signing_string: str, signature_b64: str, key: HmacKey) -> None:
        try:
            presented = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise self._fail(_MALFORMED, "signature is not base64") from None
        if not hmac.compare_digest(sign(key.secret, signing_string), presented):
            raise self._fail(Reason.BAD_SIGNATURE)
