"""Reading a credential from where the configuration says it is (header, scheme, query, cookie)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from extauthz.authn.base import AuthenticatorBase, Challenge, CredentialSurface
from extauthz.config.schema import CredentialSource
from extauthz.errors import AuthenticationError
from extauthz.types import RequestView


@dataclass(frozen=True, slots=True)
class Source:
    """A compiled :class:`CredentialSource`."""

    header: str | None = None
    scheme: str | None = None  # lowercased Authorization scheme
    query: str | None = None
    cookie: str | None = None

    @classmethod
    def from_spec(cls, spec: CredentialSource) -> Source:
        return cls(
            header=spec.header,
            scheme=spec.authorization.lower() if spec.authorization else None,
            query=spec.query,
            cookie=spec.cookie,
        )

    def read(self, view: RequestView) -> str | None:
        """The raw credential, or None when this source has none.

        An ``Authorization`` header with another scheme is "absent" for this source (another
        method may own that scheme); an empty value under our scheme is returned as ``""`` so the
        caller can reject it as malformed rather than treat it as absent.
        """
        if self.header is not None:
            return view.headers.value(self.header)
        if self.scheme is not None:
            raw = view.headers.value("authorization")
            if raw is None:
                return None
            scheme, _, rest = raw.strip().partition(" ")
            if scheme.lower() != self.scheme:
                return None
            return rest.strip()
        if self.query is not None:
            return view.query.get(self.query)
        if self.cookie is not None:
            return view.cookie(self.cookie)
        return None

    @property
    def strip_header(self) -> str | None:
        """The request header to remove on allow, if this source is a header."""
        if self.header is not None:
            return self.header
        if self.scheme is not None:
            return "authorization"
        return None

    def describe(self) -> tuple[str, str]:
        """A (param, value) pair for challenges: where the client should put the credential."""
        if self.header is not None:
            return ("header", self.header)
        if self.scheme is not None:
            return ("scheme", self.scheme)
        if self.query is not None:
            return ("query", self.query)
        return ("cookie", self.cookie or "")


class SourceCredentials(AuthenticatorBase):
    """Shared part of authenticators whose credential comes from :class:`Source` locations.

    Supplies the challenge (``error="invalid_token"`` with a public-safe description when the
    credential was invalid) and the :class:`~extauthz.authn.base.CredentialSurface` of those
    locations, all computed once at build time. Call :meth:`_init_credentials` from
    ``__init__`` (``extra``: the other surface fields, e.g. injected headers).
    """

    _challenge: Challenge
    _challenge_plain: str

    def _init_credentials(
        self, challenge: Challenge, sources: Iterable[Source], **extra: Any
    ) -> None:
        sources = tuple(sources)
        self._challenge = challenge
        self._challenge_plain = challenge.render()
        self.surface = CredentialSurface(
            headers=tuple(h for s in sources if (h := s.strip_header)),
            query_params=tuple(s.query for s in sources if s.query),
            cookies=tuple(s.cookie for s in sources if s.cookie),
            **extra,
        )

    def challenge(self, error: AuthenticationError | None = None) -> str:
        """``WWW-Authenticate`` for a 401; with ``error``, the RFC 6750 invalid_token form."""
        if error is None:
            return self._challenge_plain
        return self._challenge.render(
            ("error", "invalid_token"), ("error_description", error.description)
        )
