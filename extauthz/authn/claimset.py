"""A compact, read-only mapping for the claims of a verified token.

A verified JWT's claims live in the token cache until the token expires: with 100 000 cached
tokens, a ``dict`` per token (plus the ``MappingProxyType`` that kept it read-only) was the
largest part of an entry (~410 of ~1 190 bytes, docs/memory.md). The tokens of one issuer carry
the same claim names, so a :class:`ClaimSet` keeps only a tuple of values per token and shares
the name -> position table (its *layout*) with every token of the same shape: ~170 bytes.

It is a :class:`collections.abc.Mapping` (what ``Identity.claims`` promises), read-only like the
proxy it replaces; nested objects (``cnf``, ``realm_access``) stay plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ClaimSet", "Layouts"]

#: distinct layouts kept per :class:`Layouts` table; beyond it a token gets its own layout
MAX_LAYOUTS = 1024


class ClaimSet(Mapping[str, Any]):
    """Claim name -> value, stored as a shared layout and a tuple of values."""

    __slots__ = ("_layout", "_values")

    def __init__(self, layout: Mapping[str, int], values: tuple[Any, ...]) -> None:
        self._layout = layout
        self._values = values

    def __getitem__(self, name: str) -> Any:
        return self._values[self._layout[name]]

    def get(self, name: str, default: Any = None) -> Any:
        index = self._layout.get(name)
        return default if index is None else self._values[index]

    def __contains__(self, name: object) -> bool:
        return name in self._layout

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ClaimSet({dict(self.items())!r})"


class Layouts:
    """Shares one layout among the claim sets with the same names in the same order."""

    __slots__ = ("_layouts",)

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, ...], Mapping[str, int]] = {}

    def claims(self, claims: dict[str, Any]) -> ClaimSet:
        """A :class:`ClaimSet` with the items of ``claims`` (same order)."""
        names = tuple(claims)
        layout = self._layouts.get(names)
        if layout is None:
            layout = {name: i for i, name in enumerate(names)}
            if len(self._layouts) < MAX_LAYOUTS:
                self._layouts[names] = layout
        return ClaimSet(layout, tuple(claims.values()))
