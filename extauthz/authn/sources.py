"""Reading a credential from where the configuration says it is (header, scheme, query, cookie)."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.config.schema import CredentialSource
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
