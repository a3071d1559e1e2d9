"""The contract every authentication method implements — written down here, and only here.

An authenticator is an object configured under a ``name`` that verifies one ``kind`` of
credential. What the rest of extauthz may ask of it is exactly the :class:`Authenticator`
Protocol, built from small named capabilities (Authorino-style), each with a default in
:class:`AuthenticatorBase` so a method declares only what differs:

=====================  =====================================================================
capability             members (default in :class:`AuthenticatorBase`)
=====================  =====================================================================
:class:`Verifies`      ``kind``, ``name``, ``authenticate(view)`` (no default: the method)
:class:`Challenges`    ``challenge(error)`` — the 401 ``WWW-Authenticate`` (no default),
                       ``forbidden_challenge(error)`` — the 403 one (default: none)
:class:`Declares`      ``surface`` — one :class:`CredentialSurface` (default: nothing read),
                       and the derived ``credential_headers/_query_params/_cookies()``
:class:`HasLifecycle`  ``start()``, ``close()`` (default: nothing to do), ``ready()``
                       (default: True)
=====================  =====================================================================

``authenticate(view)`` returns:

* ``None``      — this method's credential is absent from the request (try the next method);
* an Identity   — the credential is present and valid;
* it raises :class:`~extauthz.errors.AuthenticationError` when the credential is present but
  invalid (the pipeline then denies with 401: an invalid credential never falls through to another
  method or to public access), or :class:`~extauthz.errors.DependencyUnavailable` (503).

Nothing outside an authenticator probes it with ``getattr``: whatever the pipeline, the snapshot
or the server needs is a member here (tests/unit/test_authn_contract.py keeps it so). State that
must outlive a reload is not kept in (or copied between) authenticators: it lives in the
process's :class:`~extauthz.authn.reload_state.ReloadState`, reached through the
:class:`~extauthz.authn.context.BuildContext`. docs/authenticators.md is the guide for a new
method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from extauthz.errors import AuthenticationError, AuthorizationError, Reason
from extauthz.types import AuthMethod, Identity, RequestView

__all__ = [
    "Authenticator",
    "AuthenticatorBase",
    "BearerScopeChallenge",
    "Challenge",
    "Challenges",
    "CredentialSurface",
    "Declares",
    "HasLifecycle",
    "Verifies",
]


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


@dataclass(frozen=True, slots=True)
class CredentialSurface:
    """Everything of a request (and of the filesystem) an authenticator reads or writes.

    Declared once, at build time; the pipeline reads it to strip credentials on allow, to apply
    ``settings.limits`` before verification, to reserve identity headers, and the snapshot to
    watch files. A field left at its default means "none" / "the usual rule".
    """

    #: lowercase request headers that carry the credential: stripped on allow, and each value
    #: (after the scheme, for ``authorization``) bounded by ``max_token_bytes``
    headers: tuple[str, ...] = ()
    #: query parameters that carry the credential (stripped, bounded like headers)
    query_params: tuple[str, ...] = ()
    #: cookie names that carry the credential (cut out of ``Cookie``, bounded like headers)
    cookies: tuple[str, ...] = ()
    #: identity headers this method may set upstream besides the standard ones: reserved on
    #: every route, so a client can never send them itself (even when a token lacks the claim)
    injected_headers: tuple[str, ...] = ()
    #: key material read at build time (JWKS, htpasswd, trust bundles): watched for hot reload
    source_files: tuple[Path, ...] = ()
    #: whether ``settings.limits.max_token_bytes`` bounds the credential values. False for
    #: client certificates: a chain is legitimately larger than any token, and mTLS itself and
    #: the header limits bound it
    token_size_limited: bool = True
    #: whether ``settings.limits.max_signature_components`` bounds the number of components a
    #: request signature covers (HTTP message signatures)
    signature_components_limited: bool = False
    #: the issuer of the bearer tokens this method verifies: a route with several bearer
    #: methods sends a JWT to the one of its unverified ``iss`` (extauthz.authn.dispatch)
    issuer: str | None = None


# ------------------------------------------------------------------ the capabilities


@runtime_checkable
class Verifies(Protocol):
    """Turns a request's credential into an Identity (module docstring: the three answers)."""

    #: which kind of credential this verifies (a bounded metric label)
    kind: AuthMethod
    #: the configured name, unique within a configuration
    name: str

    async def authenticate(self, view: RequestView) -> Identity | None:
        """Verify this method's credential in ``view``."""
        ...


@runtime_checkable
class Challenges(Protocol):
    """Says how a client should authenticate: ``WWW-Authenticate`` values for 401 and 403."""

    def challenge(self, error: AuthenticationError | None = None) -> str:
        """The value for a 401 (``error``: the credential was invalid, else it was missing)."""
        ...

    def forbidden_challenge(self, error: AuthorizationError) -> str | None:
        """The value for a 403 of an identity this method verified (``None``: no header)."""
        ...


@runtime_checkable
class Declares(Protocol):
    """Declares its :class:`CredentialSurface` (the derived accessors read only it)."""

    surface: CredentialSurface

    def credential_headers(self) -> tuple[str, ...]:
        """``surface.headers``."""
        ...

    def credential_query_params(self) -> tuple[str, ...]:
        """``surface.query_params``."""
        ...

    def credential_cookies(self) -> tuple[str, ...]:
        """``surface.cookies``."""
        ...


@runtime_checkable
class HasLifecycle(Protocol):
    """Background work and readiness."""

    async def start(self) -> None:
        """Begin background work (e.g. JWKS refresh). Called once before serving."""
        ...

    async def close(self) -> None:
        """Stop background work and release resources (errors are logged by the caller)."""
        ...

    def ready(self) -> bool:
        """False while the method cannot verify anything yet (a remote JWKS not fetched): the
        server does not report ready before every authenticator of its first snapshot is."""
        ...


@runtime_checkable
class Authenticator(Verifies, Challenges, Declares, HasLifecycle, Protocol):
    """An authentication method configured under a name: every capability above."""


# ------------------------------------------------------------------ the defaults


class AuthenticatorBase:
    """Defaults for every capability but ``authenticate`` and ``challenge``.

    A subclass sets ``kind`` (class attribute), ``name`` and ``surface`` (in ``__init__``) and
    overrides what differs. Every built-in method derives from it and is checked against
    :class:`Authenticator` statically (``_: type[Authenticator] = ...`` in its module).
    """

    kind: AuthMethod
    name: str
    surface: CredentialSurface = CredentialSurface()

    def forbidden_challenge(self, error: AuthorizationError) -> str | None:
        """No ``WWW-Authenticate`` on a 403 unless the method's scheme defines one."""
        return None

    def credential_headers(self) -> tuple[str, ...]:
        """The request headers that carry the credential (``surface.headers``)."""
        return self.surface.headers

    def credential_query_params(self) -> tuple[str, ...]:
        """The query parameters that carry the credential (``surface.query_params``)."""
        return self.surface.query_params

    def credential_cookies(self) -> tuple[str, ...]:
        """The cookies that carry the credential (``surface.cookies``)."""
        return self.surface.cookies

    async def start(self) -> None:
        """Nothing to start."""
        return None

    async def close(self) -> None:
        """Nothing to release."""
        return None

    def ready(self) -> bool:
        """Ready as soon as built."""
        return True


class BearerScopeChallenge:
    """RFC 6750 §3.1 for bearer-token methods: a 403 for lacking scope says which scope.

    ``Bearer realm="<realm>", error="insufficient_scope", scope="<scope>"`` — always the
    ``Bearer`` scheme (whatever header carried the token), the realm of ``settings.realm``, and
    the needed scope with any ``"`` removed. Other 403s carry no challenge. Mix in before
    :class:`AuthenticatorBase`; call :meth:`_init_bearer_scope` from ``__init__``.
    """

    _bearer_realm: str

    def _init_bearer_scope(self, realm: str) -> None:
        self._bearer_realm = _quote(realm)

    def forbidden_challenge(self, error: AuthorizationError) -> str | None:
        """The ``insufficient_scope`` challenge, for that reason only."""
        if error.reason is not Reason.INSUFFICIENT_SCOPE:
            return None
        scope = error.scope.replace('"', "")
        return f'Bearer realm="{self._bearer_realm}", error="insufficient_scope", scope="{scope}"'
