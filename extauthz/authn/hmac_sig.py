"""HTTP request signatures with shared keys: RFC 9421 ``hmac-sha256`` and a draft-cavage profile.

Profile ``rfc9421`` (default)
-----------------------------
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

Component values (RFC 9421 §2.2): ``@method`` as sent; ``@authority`` = the ``:authority`` (else
``host``) header, lowercased, default port removed; ``@scheme`` lowercased; ``@path`` and
``@query`` (``?`` + raw query, ``?`` alone when there is none) as Envoy forwarded them (after its
path normalization); ``@request-target`` = path + query; ``@target-uri`` = scheme://authority +
request target. Header fields: the value with surrounding whitespace removed; ``host`` falls back
to ``:authority`` (Envoy turns an HTTP/1.1 Host into ``:authority``). Parameters ``sf`` (for
fields known to be structured: the digest, signature and priority fields), ``key`` (a dictionary
member) and ``bs`` are supported; ``req``, ``tr``, ``@query-param`` and ``@status`` are refused as
malformed. Envoy joins repeated header lines with ``,`` rather than RFC 9421's ``, ``, so a covered
field must be sent as a single line.

The ``@signature-params`` line is the canonical RFC 8941 serialization of the parsed inner list
(what every conforming signer produces).

Profile ``cavage``
------------------
For clients of Kong's and APISIX's ``hmac-auth``: ``Authorization: Signature keyId="...",
algorithm="hmac-sha256",headers="...",signature="<base64>"`` (scheme ``hmac`` and ``username``
instead of ``keyId`` also accepted, as Kong sends them), or the same parameters in a ``Signature``
header. The signing string is built from the ``headers`` list:

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

Challenge: ``WWW-Authenticate: Signature realm="<realm>", headers="<required components>"`` (plus
``error``/``error_description`` after an invalid signature). No ``Accept-Signature`` is sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any

from extauthz import sfv
from extauthz.authn.base import Authenticator, AuthenticatorBase, Challenge, CredentialSurface
from extauthz.authn.context import BuildContext
from extauthz.authn.digest import (
    BodyNotForwarded,
    BodyTruncated,
    DigestError,
    complete_body,
    verify_content_digest,
    verify_legacy_digest,
)
from extauthz.authn.nonces import (
    MemoryNonceStore,
    NonceStore,
    NonceStoreFull,
    NonceStoreUnavailable,
    NonceTooOld,
    NonceUse,
    key_scope,
)
from extauthz.authn.secrets import load_secret
from extauthz.clock import Clock
from extauthz.config.schema import HmacSpec
from extauthz.errors import AuthenticationError, DependencyUnavailable, Reason
from extauthz.types import AuthMethod, Headers, Identity, RequestView

log = logging.getLogger("extauthz.hmac")

ALGORITHM = "hmac-sha256"
#: signature headers longer than this are refused before parsing
MAX_HEADER_LENGTH = 8192
MAX_COMPONENTS = 64
MAX_NONCE_LENGTH = 256

_DERIVED = frozenset(
    {"@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"}
)
_FIELD_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z")
#: fields whose structured type we know, for the ``sf`` component parameter
_SF_DICTIONARY = frozenset(
    {
        "signature-input", "signature", "accept-signature", "content-digest", "repr-digest",
        "want-content-digest", "want-repr-digest", "priority",
    }
)
_SF_LIST = frozenset({"cache-status", "proxy-status", "accept-ch"})
#: covered fields that vouch for the body: each is verified against it (both profiles), so no
#: signature can bind a digest that nobody checked
_BODY_DIGESTS = ("content-digest", "repr-digest", "digest")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_REQUEST_TARGETS = frozenset({"(request-target)", "@request-target", "request-line"})
_CAVAGE_PARAM = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|\Z)'
)

_MALFORMED = Reason.MALFORMED_SIGNATURE
_DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.MALFORMED_SIGNATURE: "malformed signature",
    Reason.MISSING_COMPONENT: "signature does not cover a required component",
    Reason.SIGNATURE_EXPIRED: "signature expired",
    Reason.SIGNATURE_NOT_YET_VALID: "signature created in the future",
    Reason.REPLAYED: "signature nonce already used",
    Reason.DIGEST_MISMATCH: "content digest mismatch",
    Reason.BODY_TRUNCATED: "body truncated",
    Reason.BODY_NOT_FORWARDED: "request body not forwarded",
    Reason.BAD_SIGNATURE: "signature verification failed",
    Reason.UNKNOWN_KEY: "unknown signing key",
    Reason.DISALLOWED_ALGORITHM: "signature algorithm not allowed",
}


class ComponentError(ValueError):
    """A covered component cannot be derived: unsupported, malformed, or absent."""

    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class HmacKey:
    """A verified, loaded key."""

    id: str
    secret: bytes
    consumer: str | None = None
    scopes: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never print the secret
        return f"HmacKey(id={self.id!r}, consumer={self.consumer!r})"


# --------------------------------------------------------------------------- component values


def _authority(view: RequestView) -> str:
    raw = view.headers.value(":authority") or view.headers.value("host") or view.host
    authority = raw.strip().lower()
    default = _DEFAULT_PORTS.get(view.scheme.lower())
    if default and authority.endswith(":" + default) and not authority.endswith("]"):
        authority = authority[: -len(default) - 1]
    return authority


def _request_target(view: RequestView) -> str:
    path = view.path or "/"
    return f"{path}?{view.raw_query}" if view.raw_query else path


def _method(view: RequestView) -> str:
    return view.headers.value(":method") or view.method


def _field(headers: Headers, name: str) -> str | None:
    value = headers.value(name)
    if value is None and name == "host":
        value = headers.value(":authority")
    return None if value is None else value.strip(" \t")


def derived_value(view: RequestView, name: str) -> str:
    """The value of an RFC 9421 derived component (``@method``, ``@path``, ...)."""
    if name == "@method":
        return _method(view)
    if name == "@authority":
        return _authority(view)
    if name == "@scheme":
        return view.scheme.lower()
    if name == "@path":
        return view.path or "/"
    if name == "@query":
        return "?" + view.raw_query
    if name == "@request-target":
        return _request_target(view)
    if name == "@target-uri":
        return f"{view.scheme.lower()}://{_authority(view)}{_request_target(view)}"
    raise ComponentError(Reason.MALFORMED_SIGNATURE, f"unsupported derived component {name}")


def _component_value(view: RequestView, component: sfv.Item) -> str:
    name = component.value
    if not isinstance(name, str) or isinstance(name, sfv.Token):
        raise ComponentError(Reason.MALFORMED_SIGNATURE, "component identifiers must be strings")
    params = component.params
    if name.startswith("@"):
        if params:
            raise ComponentError(Reason.MALFORMED_SIGNATURE, f"unsupported parameters on {name}")
        return derived_value(view, name)
    if not _FIELD_NAME.match(name):
        raise ComponentError(Reason.MALFORMED_SIGNATURE, "invalid component name")
    unknown = set(params) - {"sf", "key", "bs"}
    if unknown:
        raise ComponentError(Reason.MALFORMED_SIGNATURE, "unsupported component parameter")
    for flag in ("sf", "bs"):
        if flag in params and params[flag] is not True:
            raise ComponentError(Reason.MALFORMED_SIGNATURE, f"invalid {flag} parameter")
    if "bs" in params and ("sf" in params or "key" in params):
        raise ComponentError(Reason.MALFORMED_SIGNATURE, "bs cannot be combined with sf or key")
    value = _field(view.headers, name)
    if value is None:
        raise ComponentError(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
    if "bs" in params:
        raw = value.encode("utf-8", "surrogateescape")
        return ":" + base64.b64encode(raw).decode("ascii") + ":"
    if "key" in params:
        key = params["key"]
        if not isinstance(key, str) or isinstance(key, sfv.Token):
            raise ComponentError(Reason.MALFORMED_SIGNATURE, "invalid key parameter")
        try:
            members = sfv.parse_dictionary(value)
        except sfv.ParseError:
            raise ComponentError(_MALFORMED, f"{name} is not a dictionary") from None
        if key not in members:
            raise ComponentError(Reason.MISSING_COMPONENT, f"covered {name} member is absent")
        return sfv.serialize_member(members[key])
    if "sf" in params:
        try:
            if name in _SF_DICTIONARY:
                return sfv.serialize_dictionary(sfv.parse_dictionary(value))
            if name in _SF_LIST:
                return sfv.serialize_list(sfv.parse_list(value))
        except (sfv.ParseError, sfv.SerializeError):
            raise ComponentError(_MALFORMED, f"{name} is not a structured field") from None
        raise ComponentError(Reason.MALFORMED_SIGNATURE, f"structured type of {name} unknown")
    return value


def signature_base(view: RequestView, signature_params: sfv.InnerList) -> str:
    """The RFC 9421 §2.5 signature base of ``view`` for the given covered components.

    Raises :class:`ComponentError` when a component is unsupported or a covered header is
    absent. Public so clients and tests can sign requests with exactly the same code.
    """
    lines: list[str] = []
    for component in signature_params.items:
        value = _component_value(view, component)
        if "\n" in value or "\r" in value:
            raise ComponentError(Reason.MALFORMED_SIGNATURE, "component value contains a newline")
        lines.append(f"{sfv.serialize_item(component)}: {value}")
    lines.append(f'"@signature-params": {sfv.serialize_inner_list(signature_params)}')
    return "\n".join(lines)


def sign(secret: bytes, base: str) -> bytes:
    """HMAC-SHA256 of a signature base (or signing string)."""
    return hmac.new(secret, base.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


# --------------------------------------------------------------------------- coverage rules

#: required component -> covered components that satisfy it (besides itself), per profile
_RFC9421_IMPLIED: Mapping[str, frozenset[str]] = {
    "@path": frozenset({"@request-target", "@target-uri"}),
    "@query": frozenset({"@request-target", "@target-uri"}),
    "@request-target": frozenset({"@target-uri"}),
    "@authority": frozenset({"@target-uri"}),
    "@scheme": frozenset({"@target-uri"}),
}
_CAVAGE_IMPLIED: Mapping[str, frozenset[str]] = {
    "@method": _REQUEST_TARGETS,
    "@path": _REQUEST_TARGETS,
    "@query": _REQUEST_TARGETS,
    "@request-target": _REQUEST_TARGETS,
    "@authority": frozenset({"host"}),
    "content-digest": frozenset({"content-digest", "digest"}),
}


def _missing(required: Sequence[str], covered: set[str], implied: Mapping[str, frozenset[str]]
             ) -> list[str]:
    out = []
    for name in required:
        if name == "@target-uri" and implied is _CAVAGE_IMPLIED:
            ok = bool(covered & _REQUEST_TARGETS) and "host" in covered
        else:
            ok = name in covered or bool(covered & implied.get(name, frozenset()))
        if not ok:
            out.append(name)
    return out


# --------------------------------------------------------------------------- the authenticator


@dataclass(frozen=True, slots=True)
class _Window:
    created: int | None
    expires: int | None
    #: end of the acceptance window: the nonce must be remembered until then
    ends_at: float


class HmacAuthenticator(AuthenticatorBase):
    """Verifies HMAC request signatures (see the module docstring for the exact rules)."""

    kind: AuthMethod = AuthMethod.HMAC

    def __init__(
        self,
        name: str,
        spec: HmacSpec,
        keys: Mapping[str, HmacKey],
        *,
        clock: Clock,
        nonces: NonceStore,
        realm: str = "extauthz",
        header_prefix: str = "x-auth-",
    ) -> None:
        self.name = name
        self._spec = spec
        self._keys = dict(keys)
        self._clock = clock
        self._nonces = nonces
        #: a store kept across reloads by the process's ReloadState: it may have been made
        #: with an earlier configuration's clock (rebound in start, on the event loop)
        self._carried_nonces = False
        # Nonces are kept per signing key (id + secret fingerprint), not per authenticator name.
        self._scopes = {kid: key_scope(kid, key.secret) for kid, key in self._keys.items()}
        self._share = spec.nonce_cache_per_key or max(1, spec.nonce_cache_size // len(keys))
        self._cavage = spec.profile == "cavage"
        self._skew = float(spec.max_skew_seconds)
        self._max_age = float(spec.max_age_seconds)
        self._digest_algs = tuple(spec.digest_algorithms)
        required = list(spec.required_components)
        if spec.require_digest and "content-digest" not in required:
            required.append("content-digest")
        self._required = tuple(required)
        self._key_header = header_prefix + "key-id"
        listed = " ".join(self._required)
        params: tuple[tuple[str, str], ...] = (("realm", realm),)
        if listed:
            params += (("headers", listed),)
        self._challenge = Challenge("Signature", params)
        self.surface = CredentialSurface(
            headers=("authorization", "signature") if self._cavage
            else ("signature", "signature-input"),
            injected_headers=(self._key_header,),
            signature_components_limited=True,
        )

    @classmethod
    def from_spec(cls, name: str, spec: HmacSpec, ctx: BuildContext) -> HmacAuthenticator:
        """Build from configuration: reads every secret now (``ValueError`` names the key)."""
        keys: dict[str, HmacKey] = {}
        for i, entry in enumerate(spec.keys):
            try:
                secret = load_secret(
                    file=entry.secret_file,
                    env=entry.secret_env,
                    encoding=entry.secret_encoding,
                    base_dir=ctx.base_dir,
                )
            except ValueError as exc:
                raise ValueError(f"keys[{i}] ({entry.id}): {exc}") from None
            if len(secret) < spec.min_secret_bytes:
                raise ValueError(
                    f"keys[{i}] ({entry.id}): secret is {len(secret)} bytes, "
                    f"shorter than min_secret_bytes ({spec.min_secret_bytes})"
                )
            keys[entry.id] = HmacKey(
                id=entry.id,
                secret=secret,
                consumer=entry.consumer,
                scopes=frozenset(entry.scopes),
            )
        # Redis (settings.redis) when configured: replay protection across replicas; else the
        # process's memory store (kept across reloads); without one, a store kept by name in
        # the ReloadState (a reload that builds this name again takes it over).
        nonces = ctx.state.nonce_store(name) if ctx.state is not None else None
        carried = nonces is None
        if nonces is None:
            nonces = ctx.reload_state.cell(
                AuthMethod.HMAC, name, lambda: MemoryNonceStore(ctx.clock), MemoryNonceStore)
        authenticator = cls(
            name,
            spec,
            keys,
            clock=ctx.clock,
            nonces=nonces,
            realm=ctx.settings.realm,
            header_prefix=ctx.settings.identity_header_prefix,
        )
        authenticator._carried_nonces = carried
        return authenticator

    # ----------------------------------------------------------------------------- helpers

    def _fail(self, reason: Reason, description: str = "", detail: str = "") -> AuthenticationError:
        return AuthenticationError(
            reason, description or _DESCRIPTIONS.get(reason, ""), detail, authenticator=self.name
        )

    def _check_time(self, created: int | None, expires: int | None) -> _Window:
        now = self._clock()
        skew = self._skew
        if created is None and expires is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature needs created or expires")
        if created is not None and expires is not None and expires < created:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature expires before it is created")
        ends: list[float] = []
        if created is not None:
            if created > now + skew:
                raise self._fail(Reason.SIGNATURE_NOT_YET_VALID)
            ends.append(created + self._max_age + skew)
        if expires is not None:
            ends.append(expires + skew)
            if created is None and expires - now > self._max_age + skew:
                # Without created, a far expires would make an unbounded replay window.
                raise self._fail(Reason.MALFORMED_SIGNATURE, "signature lifetime too long")
        ends_at = min(ends)
        if now > ends_at:
            raise self._fail(Reason.SIGNATURE_EXPIRED)
        return _Window(created, expires, ends_at)

    def _check_body(self, view: RequestView, header: str) -> None:
        value = _field(view.headers, header)
        if value is None:
            raise self._fail(Reason.MISSING_COMPONENT, f"covered header {header} is absent")
        # Only a body extauthz provably received whole can satisfy a digest (digest.py says
        # what Envoy sends); "no body forwarded" is never read as "empty body".
        try:
            body = complete_body(view.headers, view.body)
        except BodyTruncated as exc:
            raise self._fail(Reason.BODY_TRUNCATED, str(exc)) from None
        except BodyNotForwarded as exc:
            raise self._fail(
                Reason.BODY_NOT_FORWARDED, str(exc),
                "a signature covers a body digest but Envoy forwarded no body "
                "(with_request_body off or disabled on this route?)",
            ) from None
        if header == "repr-digest":
            # RFC 9530: the digest of the representation, i.e. of the body before any
            # content-coding. Without one it is the body itself; with one it cannot be checked
            # here, and an unchecked covered digest would vouch for any body.
            coding = (view.headers.value("content-encoding") or "identity").strip().lower()
            if coding != "identity":
                raise self._fail(Reason.DIGEST_MISMATCH,
                                 "repr-digest of an encoded body cannot be verified")
        try:
            if header == "digest":
                verify_legacy_digest(value, body, self._digest_algs)
            else:
                verify_content_digest(value, body, self._digest_algs)
        except DigestError as exc:
            raise self._fail(Reason.DIGEST_MISMATCH, str(exc)) from None

    async def _remember_nonce(self, key: HmacKey, nonce: str, window: _Window) -> None:
        try:
            fresh = await self._nonces.remember(NonceUse(
                scope=self._scopes[key.id], nonce=nonce, created=window.created,
                expires=window.expires, max_age=self._max_age, skew=self._skew,
                share=self._share,
            ))
        except NonceTooOld as exc:
            raise self._fail(Reason.SIGNATURE_EXPIRED, detail=str(exc)) from None
        except NonceStoreFull as exc:
            log.warning("authenticator %s: nonce store refused: %s", self.name, exc)
            raise DependencyUnavailable(
                Reason.DEPENDENCY_UNAVAILABLE, "replay protection unavailable"
            ) from None
        except NonceStoreUnavailable:
            # A shared store (Redis) cannot answer: fail closed (logged by the store's client).
            raise DependencyUnavailable(
                Reason.SHARED_STATE_UNAVAILABLE, "replay protection unavailable"
            ) from None
        if not fresh:
            raise self._fail(Reason.REPLAYED)

    def _identity(self, key: HmacKey, claims: dict[str, Any], expires: int | None) -> Identity:
        return Identity(
            method=self.kind,
            subject=key.consumer or key.id,
            authenticator=self.name,
            consumer=key.consumer,
            scopes=key.scopes,
            claims=MappingProxyType(claims),
            expires_at=float(expires) if expires is not None else None,
            headers=((self._key_header, key.id),),
            key_id=key.id,
        )

    # ----------------------------------------------------------------------------- entry

    async def authenticate(self, view: RequestView) -> Identity | None:
        if self._cavage:
            return await self._authenticate_cavage(view)
        return await self._authenticate_rfc9421(view)

    # ----------------------------------------------------------------------------- RFC 9421

    def _select(
        self, inputs: sfv.Dictionary, signatures: sfv.Dictionary
    ) -> tuple[str, sfv.InnerList, HmacKey]:
        if self._spec.label is not None:
            labels = [self._spec.label]
            if self._spec.label not in inputs:
                raise self._fail(Reason.MALFORMED_SIGNATURE, "expected signature label absent")
        else:
            labels = list(inputs)
        seen_keyid = False
        wanted_tag = self._spec.tag
        seen_tag = False
        for label in labels:
            member = inputs[label]
            if not isinstance(member, sfv.InnerList):
                raise self._fail(Reason.MALFORMED_SIGNATURE, "signature input is not a list")
            if wanted_tag is not None and self._spec.label is None:
                # RFC 9421 §2.3: the tag says which application a signature is for; with a
                # configured tag, signatures for other applications are skipped, not fatal
                if member.params.get("tag") != wanted_tag:
                    continue
                seen_tag = True
            keyid = member.params.get("keyid")
            if keyid is None:
                continue
            if not isinstance(keyid, str) or isinstance(keyid, sfv.Token):
                raise self._fail(Reason.MALFORMED_SIGNATURE, "keyid must be a string")
            seen_keyid = True
            key = self._keys.get(keyid)
            if key is None:
                continue
            if label not in signatures:
                raise self._fail(Reason.MALFORMED_SIGNATURE, "signature missing for its input")
            return label, member, key
        if seen_keyid:
            raise self._fail(Reason.UNKNOWN_KEY)
        if wanted_tag is not None and not seen_tag and self._spec.label is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "no signature with the expected tag")
        raise self._fail(Reason.MALFORMED_SIGNATURE, "signature has no keyid")

    def _params(self, inner: sfv.InnerList) -> tuple[int | None, int | None, str | None]:
        params = inner.params
        for name in ("created", "expires"):
            value = params.get(name)
            if value is not None and (type(value) is not int or value < 0):
                raise self._fail(Reason.MALFORMED_SIGNATURE, f"{name} must be an integer")
        for name in ("keyid", "nonce", "alg", "tag"):
            value = params.get(name)
            if value is not None and (not isinstance(value, str) or isinstance(value, sfv.Token)):
                raise self._fail(Reason.MALFORMED_SIGNATURE, f"{name} must be a string")
        alg = params.get("alg")
        if alg is not None and alg != ALGORITHM:
            raise self._fail(Reason.DISALLOWED_ALGORITHM)
        tag = params.get("tag")
        if self._spec.tag is not None and tag != self._spec.tag:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature tag not accepted")
        nonce = params.get("nonce")
        if nonce is not None and not 0 < len(str(nonce)) <= MAX_NONCE_LENGTH:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "invalid nonce")
        created = params.get("created")
        expires = params.get("expires")
        if self._spec.require_created and created is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature lacks created")
        if self._spec.require_nonce and nonce is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature lacks nonce")
        return (
            created if type(created) is int else None,
            expires if type(expires) is int else None,
            nonce if isinstance(nonce, str) else None,
        )

    def _covered(self, inner: sfv.InnerList) -> tuple[set[str], set[str]]:
        """(components covered whole, names covered at all — also by a ``key`` member)."""
        if len(inner.items) > MAX_COMPONENTS:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "too many covered components")
        identifiers: set[str] = set()
        covered: set[str] = set()
        touched: set[str] = set()
        for item in inner.items:
            if not isinstance(item.value, str) or isinstance(item.value, sfv.Token):
                raise self._fail(_MALFORMED, "component identifiers must be strings")
            try:
                identifier = sfv.serialize_item(item)
            except sfv.SerializeError:
                raise self._fail(Reason.MALFORMED_SIGNATURE, "invalid component") from None
            if identifier in identifiers:
                raise self._fail(Reason.MALFORMED_SIGNATURE, "duplicate covered component")
            identifiers.add(identifier)
            touched.add(item.value)
            if "key" not in item.params:  # a dictionary member covers only part of the field
                covered.add(item.value)
        return covered, touched

    async def _authenticate_rfc9421(self, view: RequestView) -> Identity | None:
        raw_input = view.headers.value("signature-input")
        raw_signature = view.headers.value("signature")
        if raw_input is None and raw_signature is None:
            return None
        if raw_input is None or raw_signature is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "Signature and Signature-Input needed")
        if len(raw_input) > MAX_HEADER_LENGTH or len(raw_signature) > MAX_HEADER_LENGTH:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature header too long")
        try:
            inputs = sfv.parse_dictionary(raw_input)
            signatures = sfv.parse_dictionary(raw_signature)
        except sfv.ParseError as exc:
            raise self._fail(Reason.MALFORMED_SIGNATURE, detail=str(exc)) from None
        label, inner, key = self._select(inputs, signatures)
        signature_item = signatures[label]
        if not isinstance(signature_item, sfv.Item) or not isinstance(signature_item.value, bytes):
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature must be a byte sequence")
        created, expires, nonce = self._params(inner)
        covered, touched = self._covered(inner)
        missing = _missing(self._required, covered, _RFC9421_IMPLIED)
        if missing:
            raise self._fail(
                Reason.MISSING_COMPONENT, f"signature must cover {', '.join(missing)}"
            )
        window = self._check_time(created, expires)
        try:
            base = signature_base(view, inner)
        except ComponentError as exc:
            raise self._fail(exc.reason, exc.description) from None
        except sfv.SerializeError:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "invalid signature parameters") from None
        if not hmac.compare_digest(sign(key.secret, base), signature_item.value):
            raise self._fail(Reason.BAD_SIGNATURE)
        for header in _BODY_DIGESTS:  # even one covered member binds the body
            if header in touched:
                self._check_body(view, header)
        if nonce is not None:
            await self._remember_nonce(key, nonce, window)
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
        return self._identity(key, claims, expires)

    # ----------------------------------------------------------------------------- cavage

    def _cavage_params(self, view: RequestView) -> tuple[dict[str, str], bool] | None:
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
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature header too long")
        return self._parse_auth_params(text.strip()), kong_scheme

    def _parse_auth_params(self, text: str) -> dict[str, str]:
        params: dict[str, str] = {}
        pos = 0
        while pos < len(text):
            match = _CAVAGE_PARAM.match(text, pos)
            if match is None or match.end() == pos:
                raise self._fail(Reason.MALFORMED_SIGNATURE, "malformed signature parameters")
            name, value = match.group(1), match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name in params:
                raise self._fail(Reason.MALFORMED_SIGNATURE, f"duplicate parameter {name}")
            params[name] = value
            pos = match.end()
        return params

    def _cavage_key(self, params: Mapping[str, str]) -> HmacKey:
        key_id = params.get("keyId")
        username = params.get("username")
        if key_id is not None and username is not None and key_id != username:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "keyId and username differ")
        key_id = key_id if key_id is not None else username
        if not key_id:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature has no keyId")
        key = self._keys.get(key_id)
        if key is None:
            raise self._fail(Reason.UNKNOWN_KEY)
        return key

    @staticmethod
    def _int_param(params: Mapping[str, str], name: str) -> int | None:
        value = params.get(name)
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or len(value) > 15:  # not "²" or "٣"
            raise ValueError(name)
        return int(value)

    def _http_date(self, view: RequestView, name: str) -> int:
        value = _field(view.headers, name)
        if value is None:
            raise self._fail(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise self._fail(Reason.MALFORMED_SIGNATURE, f"invalid {name} header") from None
        if parsed.tzinfo is None:
            raise self._fail(Reason.MALFORMED_SIGNATURE, f"invalid {name} header")
        return int(parsed.timestamp())

    def _cavage_line(
        self, view: RequestView, spelled: str, created: int | None, expires: int | None,
        kong: bool,
    ) -> str:
        name = spelled.lower()
        if name == "(request-target)":
            return f"(request-target): {_method(view).lower()} {_request_target(view)}"
        if name == "@request-target":
            if kong:
                return f"@request-target: {_method(view).lower()} {_request_target(view)}"
            return f"{_method(view).upper()} {_request_target(view)}"
        if name == "request-line":
            return f"{_method(view).upper()} {_request_target(view)} {_http_version(view)}"
        if name in ("(created)", "(expires)"):
            number = created if name == "(created)" else expires
            if number is None:
                raise self._fail(Reason.MALFORMED_SIGNATURE, f"{name} covered but not given")
            return f"{name}: {number}"
        if not _FIELD_NAME.match(name):
            raise self._fail(Reason.MALFORMED_SIGNATURE, "invalid header name in headers")
        value = _field(view.headers, name)
        if value is None:
            raise self._fail(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
        # draft-cavage lowercases the name; Kong and APISIX write it as the client listed it
        shown = spelled if kong or self._spec.dialect == "apisix" else name
        return f"{shown}: {value}"

    async def _authenticate_cavage(self, view: RequestView) -> Identity | None:
        found = self._cavage_params(view)
        if found is None:
            return None
        params, kong_scheme = found
        # Kong's signing string: dialect kong, or its own `hmac` scheme under dialect draft
        # (no other client sends that scheme, so it says which signing string was used)
        kong = self._spec.dialect == "kong" or (self._spec.dialect == "draft" and kong_scheme)
        signature_b64 = params.get("signature")
        if not signature_b64:
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature parameter missing")
        algorithm = params.get("algorithm")
        if algorithm is not None and algorithm.lower() not in (ALGORITHM, "hs2019"):
            raise self._fail(Reason.DISALLOWED_ALGORITHM)
        key = self._cavage_key(params)
        listed = params.get("headers")
        if listed is None or not listed.strip():
            raise self._fail(Reason.MALFORMED_SIGNATURE, "headers parameter required")
        spelled = listed.split()
        names = [n.lower() for n in spelled]
        if len(names) > MAX_COMPONENTS or len(set(names)) != len(names):
            raise self._fail(Reason.MALFORMED_SIGNATURE, "invalid headers parameter")
        covered = set(names)
        missing = _missing(self._required, covered, _CAVAGE_IMPLIED)
        if missing:
            raise self._fail(
                Reason.MISSING_COMPONENT, f"signature must cover {', '.join(missing)}"
            )
        try:
            created = self._int_param(params, "created")
            expires = self._int_param(params, "expires")
        except ValueError as exc:
            raise self._fail(Reason.MALFORMED_SIGNATURE, f"{exc} must be an integer") from None
        # Only a signed time counts: (created), else a covered Date / X-Date.
        signed_created: int | None = None
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
        signed_expires = expires if "(expires)" in covered else None
        self._check_time(signed_created, signed_expires)
        lines = [self._cavage_line(view, n, created, expires, kong) for n in spelled]
        if self._spec.dialect == "apisix":
            signing_string = "\n".join([key.id, *lines]) + "\n"
        else:
            signing_string = "\n".join(lines)
        try:
            presented = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise self._fail(Reason.MALFORMED_SIGNATURE, "signature is not base64") from None
        if not hmac.compare_digest(sign(key.secret, signing_string), presented):
            raise self._fail(Reason.BAD_SIGNATURE)
        for header in _BODY_DIGESTS:
            if header in covered:
                self._check_body(view, header)
        claims: dict[str, Any] = {
            "keyid": key.id,
            "alg": ALGORITHM,
            "components": names,
            "created": signed_created,
        }
        if signed_expires is not None:
            claims["expires"] = signed_expires
        return self._identity(key, claims, signed_expires)

    # ----------------------------------------------------------------------------- protocol

    def challenge(self, error: AuthenticationError | None = None) -> str:
        if error is None:
            return self._challenge.render()
        return self._challenge.render(
            ("error", "invalid_signature"), ("error_description", error.description)
        )

    async def start(self) -> None:
        nonces = self._nonces
        if self._carried_nonces and isinstance(nonces, MemoryNonceStore):
            nonces.rebind_clock(self._clock)


_: type[Authenticator] = HmacAuthenticator  # static conformance check (mypy)


def _http_version(view: RequestView) -> str:
    """The request-line version as nginx (Kong) renders it: ``HTTP/1.1``, ``HTTP/2.0``."""
    protocol = (view.protocol or "HTTP/1.1").upper()
    if protocol in ("HTTP/2", "HTTP/3"):
        return protocol + ".0"
    return protocol
