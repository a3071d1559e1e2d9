"""Authorization: a route's ``authz`` (:class:`AuthzSpec`) and its rules (:class:`RuleSpec`, one
model per kind). Compiled by extauthz/authz/policy.py; docs/policies.md.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from extauthz.config.external import AuthzenRule
from extauthz.config.schema.base import HeaderName, Model, Name, header_name

# A route's policy is a list of rules evaluated in order; every rule must pass and the first that
# fails denies (403). Each rule is a mapping with exactly one key, its kind. What each kind means,
# and the reason code it denies with, is documented in docs/policies.md; the compiled forms live in
# extauthz/authz/. Everything that can be checked without running a request (regexes, CIDRs,
# operand kinds) is checked here, so `extauthz validate` reports it with its exact path; CEL
# expressions are compiled (and reported) by extauthz.authz.policy.

#: a JSON scalar a claim, header or query value can be compared with
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat

#: identity fields an ``equal`` operand may name
IdentityField = Literal["subject", "consumer", "method"]


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class ValueMatch(Model):
    """How one value (a claim, header or query parameter) is compared; exactly one is set.

    An array value is treated as the set of its elements, a scalar as a one-element set.
    """

    #: the value is a scalar equal to this (JSON equality: ``1`` is not ``"1"`` nor ``true``)
    equals: Scalar | None = None
    #: the value is a scalar equal to one of these
    one_of: list[Scalar] | None = Field(default=None, min_length=1)
    #: the value (array or scalar) contains this element
    contains: Scalar | None = None
    #: the value is a string that matches this regular expression as a whole (Python ``re``)
    regex: str | None = None
    #: the value is present (and not null)
    exists: Literal[True] | None = None
    #: the value is absent (or null)
    absent: Literal[True] | None = None

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_regex(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueMatch:
        set_ = [k for k in _MATCHERS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"set exactly one of {', '.join(_MATCHERS)}")
        return self

    @property
    def matcher(self) -> str:
        return next(k for k in _MATCHERS if getattr(self, k) is not None)


_MATCHERS = ("equals", "one_of", "contains", "regex", "exists", "absent")


class ClaimRule(ValueMatch):
    """``claim: {path: realm_access.roles, contains: admin}``."""

    #: dotted claim path; a top-level claim whose name contains dots is matched first
    path: str = Field(min_length=1)


class MetadataRule(ValueMatch):
    """``metadata: {path: owner.id, equals: alice}``: a value a metadata lookup returned."""

    #: ``<lookup name>.<dotted path>`` in the lookup's JSON answer
    path: str = Field(min_length=1)


class HeaderRule(ValueMatch):
    """``header: {name: x-tenant, equals: acme}`` (values are strings)."""

    name: HeaderName

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return header_name(v)


class QueryRule(ValueMatch):
    """``query: {name: tenant, exists: true}`` (the first value of the parameter)."""

    name: str = Field(min_length=1)


class RolesRule(Model):
    """``roles: {claim: realm_access.roles, any_of: [admin]}``; exactly one of any_of/all_of."""

    #: dotted path of the claim holding the roles (an array, or one role as a string)
    claim: str = Field(min_length=1)
    any_of: list[str] | None = Field(default=None, min_length=1)
    all_of: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> RolesRule:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("set exactly one of any_of, all_of")
        return self


class AllowDeny(Model):
    """An allow list and/or a deny list. A plain list is shorthand for ``{allow: [...]}``."""

    #: when set, the value must be one of these
    allow: list[str] | None = None
    #: the value must not be one of these
    deny: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _list_is_allow(cls, data: Any) -> Any:
        return {"allow": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _something(self) -> AllowDeny:
        if self.allow is None and not self.deny:
            raise ValueError("set allow and/or deny")
        return self


class SourceRule(AllowDeny):
    """``source: {allow: [10.0.0.0/8], deny: [10.9.0.0/16]}``: CIDRs of the client address."""

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        for i, cidr in enumerate(v or ()):
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"[{i}] {cidr!r}: {exc}") from None
        return v


class EqualRule(Model):
    """``equal: {param: user_id, claim: sub}``: two values from different places must be equal.

    Exactly two operand kinds: ``param`` (path-template parameter), ``claim`` (dotted path),
    ``header``, ``query``, ``identity`` (``subject``, ``consumer`` or ``method``). Both must be
    present and non-empty; two absent values are never equal.
    """

    param: str | None = None
    claim: str | None = None
    header: str | None = None
    query: str | None = None
    identity: IdentityField | None = None
    #: ``<lookup name>.<dotted path>`` in a metadata lookup's answer (docs/authzen.md)
    metadata: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else header_name(v)

    @model_validator(mode="after")
    def _two(self) -> EqualRule:
        if len(self.operands) != 2:
            raise ValueError("name exactly two of param, claim, header, query, identity, "
                             "metadata")
        return self

    @property
    def operands(self) -> list[tuple[str, str]]:
        kinds = ("param", "claim", "header", "query", "identity", "metadata")
        return [(k, getattr(self, k)) for k in kinds if getattr(self, k) is not None]


class RuleSpec(Model):
    """One authorization rule: a mapping with exactly one key, the rule's kind."""

    scopes_all: list[str] | None = Field(default=None, min_length=1)
    scopes_any: list[str] | None = Field(default=None, min_length=1)
    roles: RolesRule | None = None
    claim: ClaimRule | None = None
    consumers: AllowDeny | None = None
    subjects: AllowDeny | None = None
    methods: list[str] | None = Field(default=None, min_length=1)
    #: the mesh peer's verified identity (gRPC ``attributes.source.principal``; Istio: SPIFFE ID)
    principal: AllowDeny | None = None
    source: SourceRule | None = None
    header: HeaderRule | None = None
    query: QueryRule | None = None
    equal: EqualRule | None = None
    any_of: list[RuleSpec] | None = Field(default=None, min_length=1)
    all_of: list[RuleSpec] | None = Field(default=None, min_length=1)
    #: a CEL expression that must evaluate to true (compiled at load)
    cel: str | None = Field(default=None, min_length=1)
    #: a value from a metadata lookup (``authz.metadata``; docs/authzen.md)
    metadata: MetadataRule | None = None
    #: ask an AuthZEN PDP (``settings.pdps``; docs/authzen.md)
    authzen: AuthzenRule | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = [m.upper() for m in v]
        for m in out:
            if not re.match(r"^[A-Z]+$", m):
                raise ValueError(f"not an HTTP method: {m!r}")
        return out

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleSpec:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(kinds) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"a rule has exactly one kind ({names})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class AuthzSpec(Model):
    """The route's policy: every rule must pass; the first that fails denies with 403.

    The shorthand keys are evaluated first, in this fixed order: ``scopes_all``, ``scopes_any``,
    ``consumers``, ``subjects``; then ``rules`` in list order.
    """

    scopes_all: list[str] = Field(default_factory=list)
    scopes_any: list[str] = Field(default_factory=list)
    consumers: list[Name] | None = None
    subjects: list[str] | None = None
    #: explicit rules, evaluated in order after the shorthand keys
    rules: list[RuleSpec] = Field(default_factory=list)
    #: metadata lookups (``settings.lookups``) run before the rules (docs/authzen.md)
    metadata: list[Name] = Field(default_factory=list)
    #: evaluate and report, but do not enforce: a policy denial is logged and counted as
    #: ``shadow_deny`` and the request is allowed (authentication failures still deny)
    shadow: bool = False
