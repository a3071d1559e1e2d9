"""Configuration of external decision points and metadata lookups (docs/authzen.md).

``settings.pdps``     named AuthZEN Policy Decision Points (base URL, discovery, timeouts, cache)
``settings.lookups``  named metadata lookups (OIDC UserInfo, or a templated HTTP GET/POST)
``authz.metadata``    the lookups a route runs before its policy (``metadata.<name>`` in rules)
``rules: [{authzen: {...}}]``  a policy rule asking a PDP's Access Evaluation API

Timeouts are bounded so that the two sequential phases of a check (every lookup of the route in
parallel, then every PDP call of the route in parallel) finish before Envoy's ext_authz timeout
(1 s in deploy/envoy/*.yaml): each call may take at most :data:`MAX_CALL_SECONDS`.

Kept apart from :mod:`extauthz.config.schema` (which imports these models) so the schema module
stays one place for the core keys; this module imports nothing from it (no cycle).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the longest one outbound call (lookup or PDP, discovery included) may take: two sequential
#: phases of 0.45 s stay under Envoy's 1 s ext_authz timeout with 100 ms to spare
MAX_CALL_SECONDS = 0.45

CallSeconds = Annotated[float, Field(gt=0, le=MAX_CALL_SECONDS)]
TtlSeconds = Annotated[float, Field(ge=0, le=86400)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallLimits(_Model):
    """Time, concurrency and caching of one PDP or lookup (every key has a safe default)."""

    #: one deadline for the whole call (waiting for a concurrency slot and discovery included)
    timeout_seconds: CallSeconds = 0.25
    #: calls in flight at once to this PDP / lookup; more wait (within the deadline)
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 32
    #: how long an answer is reused (0: never cached)
    cache_ttl_seconds: TtlSeconds = 5.0
    #: how long a failure (or a lookup's 404) is remembered, so a failing service is not
    #: called again by every request (0: not remembered)
    negative_ttl_seconds: TtlSeconds = 1.0
    #: cached answers kept at most (the oldest go first)
    max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    #: largest response body accepted
    max_response_bytes: Annotated[int, Field(ge=256, le=8 * 1024 * 1024)] = 256 * 1024


class PdpSpec(CallLimits):
    """An AuthZEN PDP (OpenID AuthZEN Authorization API 1.0)."""

    #: the PDP's base URL (its ``policy_decision_point`` identifier)
    url: str = Field(min_length=1)
    #: read the endpoints from ``{url}/.well-known/authzen-configuration`` (otherwise the
    #: default paths ``/access/v1/evaluation`` and ``/access/v1/evaluations`` are used)
    discovery: bool = False
    #: static request headers (e.g. an API key the PDP requires); values are not logged
    headers: dict[str, str] = Field(default_factory=dict)


class UserinfoSpec(_Model):
    """OIDC UserInfo, called with the caller's own bearer token."""

    #: the UserInfo endpoint
    url: str = Field(min_length=1)


class HttpLookupSpec(_Model):
    """A generic HTTP call; ``url``, header values and ``body`` are templates (docs/authzen.md).

    Values substituted into the URL are percent-encoded whole (``/``, ``.``, ``?``, ``#``
    included), so a request value can never change the host, the path structure or the query.
    """

    method: Literal["GET", "POST"] = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    #: JSON body of a POST (a template: strings may hold ``{{ ... }}``, or ``{cel: ...}``)
    body: Any = None

    @model_validator(mode="after")
    def _body_only_for_post(self) -> HttpLookupSpec:
        if self.body is not None and self.method != "POST":
            raise ValueError("body: only a POST has a body")
        return self


class LookupSpec(CallLimits):
    """A metadata lookup; exactly one of ``userinfo``, ``http``."""

    userinfo: UserinfoSpec | None = None
    http: HttpLookupSpec | None = None
    #: what a failed lookup does: ``fail_closed`` (503 dependency_unavailable, the default) or
    #: ``absent`` (``metadata.<name>`` is null and the policy decides, usually a deny)
    on_error: Literal["fail_closed", "absent"] = "fail_closed"

    @model_validator(mode="after")
    def _one(self) -> LookupSpec:
        if (self.userinfo is None) == (self.http is None):
            raise ValueError("set exactly one of userinfo, http")
        return self


class AuthzenEvaluation(_Model):
    """One item of a batched request: overrides of the rule's subject/action/resource/context."""

    subject: Any = None
    action: Any = None
    resource: Any = None
    context: Any = None


class AuthzenRule(_Model):
    """``authzen: {pdp: cerbos, subject: ..., action: ..., resource: ..., context: ...}``.

    Each of subject/action/resource/context is a template (docs/authzen.md): literal JSON whose
    strings may hold ``{{ identity.subject }}``-style references, or ``{cel: "expression"}``.
    With ``evaluations`` the rule asks ``/access/v1/evaluations`` once for every item and
    ``combine`` says whether all or any must be allowed.
    """

    pdp: str = Field(min_length=1)
    subject: Any = Field(default_factory=lambda: {"type": "user", "id": "{{ identity.subject }}"})
    action: Any = Field(default_factory=lambda: {"name": "{{ request.method }}"})
    resource: Any = None
    context: Any = None
    evaluations: list[AuthzenEvaluation] | None = Field(default=None, min_length=1, max_length=64)
    combine: Literal["all", "any"] = "all"
    #: when the PDP cannot answer: ``fail_closed`` (503 dependency_unavailable, the default),
    #: ``deny`` (403 forbidden), or ``allow`` (the rule passes; counted and logged as fallback)
    on_error: Literal["fail_closed", "deny", "allow"] = "fail_closed"

    @model_validator(mode="after")
    def _resource(self) -> AuthzenRule:
        if self.resource is None and not (
            self.evaluations and all(e.resource is not None for e in self.evaluations)
        ):
            raise ValueError("resource: required (here or in every evaluations item)")
        return self
