"""The one exception tree of extauthz, and the public-safe reason codes.

::

    ExtAuthzError
    ├── ConfigError                 configuration refused (every issue at once, each with its path)
    └── CheckError                  raised while checking one request; carries a Reason
        ├── AuthenticationError     a credential was present but is invalid       -> 401
        ├── AuthorizationError      authenticated, but the policy says no         -> 403
        ├── BadRequestError         the request itself is malformed or too large  -> 400
        ├── TooManyAttempts         brute-force limit reached                     -> 429
        └── DependencyUnavailable   a dependency we need is down (JWKS, ...)      -> 503

Every :class:`CheckError` carries its outcome (h11's ``error_status_hint``): ``http_status`` and
``grpc_status`` (a google.rpc code) are class attributes, so :func:`extauthz.decision.from_error`
is a lookup, not a chain of ``isinstance``; any other exception raised during a check is a
fail-closed 503 (``internal_error``).
``description`` is public-safe text (it reaches the client); ``detail`` is for logs only and must
never contain a credential.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


class Reason(enum.StrEnum):
    """Stable, public reason codes (bounded: used as a metric label and in problem bodies)."""

    OK = "ok"
    PUBLIC = "public"
    NO_ROUTE = "no_route"
    MISSING_CREDENTIAL = "missing_credential"
    # JWT
    MALFORMED_TOKEN = "malformed_token"  # noqa: S105
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"  # noqa: S105
    TOKEN_ISSUED_IN_FUTURE = "token_issued_in_future"  # noqa: S105
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    DISALLOWED_ALGORITHM = "disallowed_algorithm"
    MISSING_CLAIM = "missing_claim"
    INVALID_TOKEN = "invalid_token"  # noqa: S105
    #: the token's ``jti`` is on a revocation list (settings.revocation_file / Redis)
    TOKEN_REVOKED = "token_revoked"  # noqa: S105
    # API keys
    INVALID_API_KEY = "invalid_api_key"
    KEY_EXPIRED = "key_expired"
    KEY_DISABLED = "key_disabled"
    #: the key is on a revocation list (``extauthz revoke key``)
    KEY_REVOKED = "key_revoked"
    # Client certificates (mTLS)
    CERT_INVALID = "cert_invalid"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    UNTRUSTED_CERT = "untrusted_cert"
    #: x-forwarded-client-cert does not fit the configured trust model (element count, or an
    #: element not written the way Envoy writes it)
    XFCC_MISMATCH = "xfcc_mismatch"
    #: RFC 8705: the token is bound (cnf x5t#S256) to another certificate, or none was presented
    CERT_BINDING_MISMATCH = "cert_binding_mismatch"
    #: the authenticator requires certificate-bound tokens and this one carries no cnf
    UNBOUND_TOKEN = "unbound_token"  # noqa: S105
    # Basic
    MALFORMED_CREDENTIALS = "malformed_credentials"
    INVALID_CREDENTIALS = "invalid_credentials"
    # Authorization
    INSUFFICIENT_SCOPE = "insufficient_scope"
    CONSUMER_NOT_ALLOWED = "consumer_not_allowed"
    FORBIDDEN = "forbidden"
    #: the verified identity has a value that cannot be an upstream header (a control character
    #: such as CR/LF/NUL, or not valid Unicode): denied (403) rather than sent without it
    IDENTITY_NOT_REPRESENTABLE = "identity_not_representable"
    #: a policy condition (CEL) failed to evaluate: denied, fail closed
    POLICY_ERROR = "policy_error"
    # HMAC request signatures
    MALFORMED_SIGNATURE = "malformed_signature"
    MISSING_COMPONENT = "missing_component"
    SIGNATURE_EXPIRED = "signature_expired"
    SIGNATURE_NOT_YET_VALID = "signature_not_yet_valid"
    REPLAYED = "replayed"
    DIGEST_MISMATCH = "digest_mismatch"
    #: a covered digest, but Envoy forwarded only part of the body
    BODY_TRUNCATED = "body_truncated"
    #: a covered digest, but the request may carry a body extauthz never received
    BODY_NOT_FORWARDED = "body_not_forwarded"
    # Token introspection
    INACTIVE_TOKEN = "inactive_token"  # noqa: S105
    INTROSPECTION_UNAVAILABLE = "introspection_unavailable"
    # Request / dependencies
    BAD_REQUEST = "bad_request"
    #: settings.limits: headers over max_header_bytes (400)
    REQUEST_TOO_LARGE = "request_too_large"
    #: settings.limits: more than max_headers header names (400)
    TOO_MANY_HEADERS = "too_many_headers"
    #: settings.limits: a body over max_body_bytes (400)
    BODY_TOO_LARGE = "body_too_large"
    #: settings.limits: a credential over max_token_bytes, or a signature over
    #: max_signature_components (401)
    CREDENTIAL_TOO_LARGE = "credential_too_large"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    #: a rate limit (rate_limiting.limits) is exhausted (429 + Retry-After + RateLimit fields)
    RATE_LIMITED = "rate_limited"
    #: a fail-closed rate limit's Redis is unreachable (503)
    RATE_LIMIT_UNAVAILABLE = "rate_limit_unavailable"
    JWKS_UNAVAILABLE = "jwks_unavailable"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    #: Redis (settings.redis) unreachable, or the revocation lists too stale: fail closed (503)
    SHARED_STATE_UNAVAILABLE = "shared_state_unavailable"
    INTERNAL_ERROR = "internal_error"


class ExtAuthzError(Exception):
    """Base class of every error extauthz raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration: where (``routes[2].authn[0].jwt.issuer``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ExtAuthzError):
    """A configuration was refused; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue], files: tuple[Path, ...] = ()) -> None:
        self.issues = issues
        #: the files the refused attempt read or looked for: a server watches them until a
        #: configuration loads, so fixing any of them in place is picked up without SIGHUP
        self.files = files
        super().__init__("\n".join(str(i) for i in issues))


class CheckError(ExtAuthzError):
    """An expected failure while checking one request."""

    #: the HTTP status of the deny this error becomes. A subclass nobody mapped is denied with
    #: 403, never a friendlier status guessed from its name.
    http_status: ClassVar[int] = 403
    #: the google.rpc.Code of that deny (``extauthz.decision.GrpcCode``; 7 PERMISSION_DENIED)
    grpc_status: ClassVar[int] = 7

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the deny adds after content-type and challenges (e.g. ``retry-after``)."""
        return ()

    def __init__(self, reason: Reason, description: str = "", detail: str = "") -> None:
        self.reason = reason
        self.description = description or reason.value.replace("_", " ")
        self.detail = detail
        super().__init__(f"{reason.value}: {self.description}")


class AuthenticationError(CheckError):
    """A credential was present but is invalid. Never falls through to another method."""

    http_status = 401
    grpc_status = 16  # UNAUTHENTICATED

    def __init__(
        self,
        reason: Reason,
        description: str = "",
        detail: str = "",
        *,
        authenticator: str = "",
    ) -> None:
        super().__init__(reason, description, detail)
        self.authenticator = authenticator


class AuthorizationError(CheckError):
    """The identity is known but the route's policy denies the request."""

    http_status = 403
    grpc_status = 7  # PERMISSION_DENIED

    def __init__(
        self,
        reason: Reason,
        description: str = "",
        detail: str = "",
        *,
        scope: str = "",
        rule: str = "",
    ) -> None:
        super().__init__(reason, description, detail)
        #: the scope(s) that would have been needed, for ``insufficient_scope`` challenges
        self.scope = scope
        #: the policy rule that denied (its configuration path, e.g. ``rules[2]``); "" when the
        #: denial came from no rule (e.g. ``identity_not_representable``)
        self.rule = rule


class BadRequestError(CheckError):
    """The request is malformed (e.g. two credentials of one kind) or over a limit."""

    http_status = 400
    grpc_status = 3  # INVALID_ARGUMENT


class TooManyAttempts(CheckError):
    """Too many failed attempts (per user or source); checked *before* any expensive verify."""

    http_status = 429
    grpc_status = 8  # RESOURCE_EXHAUSTED

    def __init__(self, reason: Reason, description: str = "", *, retry_after: int = 1) -> None:
        super().__init__(reason, description)
        self.retry_after = max(1, int(retry_after))

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(self.retry_after)),)


class DependencyUnavailable(CheckError):
    """Something the check needs (JWKS, an introspection endpoint, ...) is unavailable."""

    http_status = 503
    grpc_status = 14  # UNAVAILABLE
