"""Core value types shared by every stage of the pipeline.

All of them are frozen: a request is read once into a :class:`RequestView`, authentication yields
an :class:`Identity`, and the pipeline ends in a :class:`~extauthz.decision.Decision`. Nothing
downstream mutates what an earlier stage produced.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: what separates cookie pairs in a Cookie header (see :meth:`RequestView.cookie`)
_COOKIE_SEPARATOR = re.compile(r"[;,]")


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class Headers(Mapping[str, str]):
    """Immutable, case-insensitive request headers.

    Keys are stored lowercased (HTTP/2 and Envoy already lowercase them; the constructor enforces
    it for every other source). Repeated headers arrive from Envoy joined with ``,``.
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        data: dict[str, str] = {}
        if items:
            for key, value in items.items():
                data[key.lower()] = value
        self._data = data

    @classmethod
    def from_lowercase(cls, data: dict[str, str]) -> Headers:
        """Wrap a dict whose keys are already lowercase, without copying (hot path)."""
        obj = cls.__new__(cls)
        obj._data = data
        return obj

    def __getitem__(self, key: str) -> str:
        return self._data[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key.lower(), default)

    def value(self, key: str) -> str | None:
        """The header's value, or None (typed shortcut for ``get``)."""
        return self._data.get(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        # Never print values: they may be credentials.
        return f"Headers({sorted(self._data)})"


@dataclass(frozen=True, slots=True)
class RequestView:
    """Everything extauthz needs to know about one HTTP request, read once from the CheckRequest.

    ``host`` is lowercased with any port stripped; ``path`` excludes the query string, which is
    parsed into ``query`` (first value wins for a repeated parameter; ``raw_query`` keeps all).
    """

    method: str
    host: str
    path: str
    raw_query: str = ""
    query: Mapping[str, str] = field(default_factory=_empty)
    scheme: str = "http"
    headers: Headers = field(default_factory=Headers)
    source_address: str = ""
    source_principal: str = ""
    peer_certificate: str = ""
    context_extensions: Mapping[str, str] = field(default_factory=_empty)
    body: bytes = b""
    request_id: str = ""
    protocol: str = ""
    #: bytes (UTF-8) of the names and values of every header, counted once when the request is read
    #: (``settings.limits.max_header_bytes``); 0 for views built without a CheckRequest
    header_bytes: int = 0

    def cookie(self, name: str) -> str | None:
        """Return the value of cookie ``name`` from the ``cookie`` header, if present.

        Pairs are separated by ``;`` and also by ``,``: Envoy joins repeated ``cookie`` headers
        of an HTTP/1.1 request with ``,`` in the check request (a cookie value cannot contain
        one, RFC 6265 §4.1.1), and the upstream receives every one of them.
        """
        raw = self.headers.value("cookie")
        if not raw:
            return None
        for part in _COOKIE_SEPARATOR.split(raw):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None


class AuthMethod(enum.StrEnum):
    """The kinds of credential extauthz verifies (bounded: used as a metric label)."""

    JWT = "jwt"
    API_KEY = "api_key"
    MTLS = "mtls"
    HMAC = "hmac"
    BASIC = "basic"
    INTROSPECTION = "introspection"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request, as established by one authenticator.

    ``headers`` holds extra identity headers the authenticator derived from its configuration
    (e.g. JWT claims mapped to headers), already rendered to strings so a cached identity costs
    nothing to reuse.
    """

    method: AuthMethod
    subject: str
    authenticator: str
    consumer: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=_empty)
    expires_at: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    key_id: str | None = None
    #: every method that succeeded, in route order (more than one under ``all_of``)
    methods: tuple[AuthMethod, ...] = ()

    @property
    def all_methods(self) -> tuple[AuthMethod, ...]:
        return self.methods or (self.method,)
