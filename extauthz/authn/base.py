"""The contract every authentication method implements.

``authenticate(view)`` returns:

* ``None``      — this method's credential is absent from the request (try the next method);
* an Identity   — the credential is present and valid;
* it raises :class:`~extauthz.errors.AuthenticationError` when the credential is present but
  invalid (the pipeline then denies with 401: an invalid credential never falls through to another
  method or to public access), or :class:`~extauthz.errors.DependencyUnavailable` (503).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from extauthz.errors import AuthenticationError
from extauthz.types import AuthMethod, Identity, RequestView


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme plus auth-params (RFC 9110 §11.6.1)."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def render(self, *extra: tuple[str, str]) -> str:
        """Render as a header value; ``extra`` params (e.g. ``error``) are appended in order."""
        params = self.params + extra
        if not params:
            return self.scheme
        rendered = ", ".join(f'{k}="{_quote(v)}"' for k, v in params)
        return f"{self.scheme} {rendered}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@runtime_checkable
class Authenticator(Protocol):
    """An authentication method configured under a name."""

    #: which kind of credential this verifies (a bounded metric label)
    kind: AuthMethod
    #: the configured name, unique within a configuration
    name: str

    async def authenticate(self, view: RequestView) -> Identity | None:
        """Verify this method's credential in ``view`` (contract: module docstring)."""
        ...

    def challenge(self, error: AuthenticationError | None = None) -> str:
        """The ``WWW-Authenticate`` value for a 401 (``error``: the credential was invalid)."""
        ...

    def credential_headers(self) -> tuple[str, ...]:
        """Lowercase names of request headers that carry this credential (stripped on allow)."""
        ...

    def credential_query_params(self) -> tuple[str, ...]:
        """Query parameters that carry this credential (stripped on allow)."""
        ...

    def credential_cookies(self) -> tuple[str, ...]:
        """Cookie names that carry this credential (stripped on allow)."""
        ...

    async def start(self) -> None:
        """Begin background work (e.g. JWKS refresh). Called once before serving."""
        ...

    async def close(self) -> None:
        """Stop background work and release resources."""
        ...
