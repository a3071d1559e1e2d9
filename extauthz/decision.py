"""Decisions: the outcome of one check, and the single place where errors become outcomes.

A :class:`Decision` is protocol-neutral: :mod:`extauthz.respond` renders it (a gRPC CheckResponse,
an HTTP ext_authz answer).

Mapping (the only one in the code base; each error class carries its row, see
:mod:`extauthz.errors`)::

    no route (unless unmatched: allow)      403  PERMISSION_DENIED  no_route
    no credential for any accepted method   401  UNAUTHENTICATED    missing_credential
    AuthenticationError                     401  UNAUTHENTICATED    its reason
    AuthorizationError                      403  PERMISSION_DENIED  its reason
    BadRequestError                         400  INVALID_ARGUMENT   its reason
    TooManyAttempts                         429  RESOURCE_EXHAUSTED its reason (+ Retry-After)
    rate limit exhausted (ratelimit/)       429  RESOURCE_EXHAUSTED rate_limited (+ RateLimit)
    DependencyUnavailable                   503  UNAVAILABLE        its reason
    any other exception                     503  UNAVAILABLE        internal_error
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from extauthz.errors import CheckError, Reason
from extauthz.types import Identity


class Outcome(enum.StrEnum):
    """What happened to the request (bounded: a metric label)."""

    ALLOW = "allow"
    DENY = "deny"
    #: the route's policy denied, but the route is in shadow mode: the request is allowed
    SHADOW_DENY = "shadow_deny"


class GrpcCode(enum.IntEnum):
    """The google.rpc.Code values extauthz answers with."""

    OK = 0
    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
_EMPTY_META: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one check.

    On allow: ``upstream_headers`` are set on the request (overwriting), ``remove_headers`` are
    removed from it, ``remove_query`` parameters are dropped, ``response_headers`` are added to
    the upstream's response. On deny: ``http_status``, ``response_headers`` (challenges, content
    type) and ``body`` are what the client gets.
    """

    outcome: Outcome
    http_status: int
    grpc_code: GrpcCode
    reason: Reason
    route: str
    description: str = ""
    identity: Identity | None = None
    upstream_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    remove_query: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    dynamic_metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_META)
    #: the policy rule that denied (its configuration path, e.g. ``rules[2]``), for logs
    rule: str = ""
    #: each rate limit that applied: its result and remaining quota (decision log; see
    #: :mod:`extauthz.ratelimit.limiter`). On allow, ``response_headers`` are added to the
    #: client's response (RateLimit fields)
    rate_limit: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_META)
    #: what AuthZEN PDPs answered (pdp, rule, decision, context), for the decision log
    pdp: tuple[Mapping[str, Any], ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether the request goes through (a shadow denial does)."""
        return self.outcome is not Outcome.DENY


def problem_body(status: int, reason: Reason, description: str, request_id: str = "") -> str:
    """An RFC 9457 ``application/problem+json`` body with a stable ``reason`` member."""
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": description,
        "reason": reason.value,
    }
    if request_id:
        problem["request_id"] = request_id
    return json.dumps(problem, separators=(",", ":"))


def deny(
    status: int,
    grpc_code: GrpcCode,
    reason: Reason,
    route: str,
    description: str,
    *,
    challenges: Sequence[str] = (),
    request_id: str = "",
    identity: Identity | None = None,
) -> Decision:
    """Build a deny decision with a problem+json body and one WWW-Authenticate per challenge."""
    headers = [("content-type", "application/problem+json")]
    headers.extend(("www-authenticate", c) for c in challenges)
    return Decision(
        outcome=Outcome.DENY,
        http_status=status,
        grpc_code=grpc_code,
        reason=reason,
        route=route,
        description=description,
        identity=identity,
        response_headers=tuple(headers),
        body=problem_body(status, reason, description, request_id),
    )


def from_error(
    error: BaseException,
    route: str,
    *,
    challenges: Sequence[str] = (),
    request_id: str = "",
    identity: Identity | None = None,
) -> Decision:
    """Map any exception raised during a check to its deny decision (fail closed).

    A :class:`CheckError` says its own status (``http_status``, ``grpc_status``) and extra
    headers; ``challenges`` and ``identity`` are the caller's (401/403). Anything else is a 503.
    """
    if isinstance(error, CheckError):
        denied = deny(error.http_status, GrpcCode(error.grpc_status), error.reason, route,
                      error.description, challenges=challenges, request_id=request_id,
                      identity=identity)
        extra = error.response_headers()
        if not extra:
            return denied
        return dataclasses.replace(denied, response_headers=(*denied.response_headers, *extra))
    return deny(503, GrpcCode.UNAVAILABLE, Reason.INTERNAL_ERROR, route,
                "authorization service error", request_id=request_id)
