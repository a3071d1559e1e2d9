"""The route policy: every rule must pass; the first failure denies with 403.

This is the minimal rule set of the walking skeleton (scopes, consumers, subjects). Rules are
evaluated in a fixed, documented order: ``scopes_all``, ``scopes_any``, ``consumers``,
``subjects``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extauthz.config.schema import AuthzSpec
from extauthz.errors import AuthorizationError, Reason
from extauthz.types import Identity, RequestView


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled route policy."""

    scopes_all: frozenset[str] = frozenset()
    scopes_any: frozenset[str] = frozenset()
    consumers: frozenset[str] | None = None
    subjects: frozenset[str] | None = None

    @classmethod
    def from_spec(cls, spec: AuthzSpec) -> Policy:
        return cls(
            scopes_all=frozenset(spec.scopes_all),
            scopes_any=frozenset(spec.scopes_any),
            consumers=None if spec.consumers is None else frozenset(spec.consumers),
            subjects=None if spec.subjects is None else frozenset(spec.subjects),
        )

    @property
    def empty(self) -> bool:
        return (
            not self.scopes_all
            and not self.scopes_any
            and self.consumers is None
            and self.subjects is None
        )

    def evaluate(
        self, view: RequestView, identity: Identity, params: Mapping[str, str]
    ) -> None:
        """Return if the request is allowed; raise AuthorizationError otherwise."""
        if self.scopes_all and not self.scopes_all <= identity.scopes:
            needed = " ".join(sorted(self.scopes_all))
            raise AuthorizationError(
                Reason.INSUFFICIENT_SCOPE, "insufficient scope", scope=needed
            )
        if self.scopes_any and self.scopes_any.isdisjoint(identity.scopes):
            needed = " ".join(sorted(self.scopes_any))
            raise AuthorizationError(
                Reason.INSUFFICIENT_SCOPE, "insufficient scope", scope=needed
            )
        if self.consumers is not None and identity.consumer not in self.consumers:
            raise AuthorizationError(Reason.CONSUMER_NOT_ALLOWED, "consumer not allowed")
        if self.subjects is not None and identity.subject not in self.subjects:
            raise AuthorizationError(Reason.FORBIDDEN, "forbidden")
