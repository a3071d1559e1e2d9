"""The claims of a verified token, decoded from the request's own token when first read.

The verified-token cache keeps no claims (docs/memory.md): with 100 000 cached tokens a claims
mapping per token was ~40 % of the worker's cache memory, and most checks never read a claim
(identity headers are rendered once, at verification). A cache hit means the request carries
byte for byte the token that was verified (the cache key is its SHA-256), so its payload segment
*is* the verified claims: a :class:`LazyClaims` keeps that segment (not the signature: it is not
a credential) and decodes it the first time a rule, a CEL expression or the identity token reads
a claim — at most once per request. It lives as long as the request's Identity, never in a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["LazyClaims"]


class LazyClaims(Mapping[str, Any]):
    """Read-only claim name -> value, decoded by ``decode(segment)`` on first use."""

    __slots__ = ("_claims", "_decode", "_segment")

    def __init__(self, segment: str, decode: Callable[[str], dict[str, Any]]) -> None:
        self._segment = segment
        self._decode = decode
        self._claims: dict[str, Any] | None = None

    def _loaded(self) -> dict[str, Any]:
        claims = self._claims
        if claims is None:
            claims = self._claims = self._decode(self._segment)
        return claims

    def __getitem__(self, name: str) -> Any:
        return self._loaded()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._loaded().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"LazyClaims({self._loaded()!r})"
