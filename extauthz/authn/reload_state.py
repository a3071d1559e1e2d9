"""State that outlives one configuration: the process's carry-over store.

A reload builds a new :class:`~extauthz.snapshot.Snapshot` with new authenticators; some of what
the old ones learned must not be lost with them:

* the last good JWKS keys and discovery result (a reload during an IdP outage keeps serving);
* the introspection endpoint's cached answers (an endpoint outage during a reload);
* the in-memory HMAC replay cache when no shared store is configured (else every nonce seen
  before the reload could be replayed).

Authenticators never copy this from (or into) each other. Each reads and writes one *cell* of
the process's :class:`ReloadState`, which the server owns for its whole life and hands to every
compile through :class:`~extauthz.authn.context.BuildContext`. A cell is keyed by the
authenticator kind and by what makes two authenticators interchangeable for that state: the
authenticator name for the HMAC replay cache, what was fetched (issuer, URL, algorithms; the
endpoint, client and checks) for outbound state, so a rename keeps it too.

Cells are looked up or created while compiling (in a worker thread, serialized by the server's
reload lock; the event loop never adds cells) and their contents are read or written on the event
loop.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from extauthz.types import AuthMethod

__all__ = ["ReloadState"]

T = TypeVar("T")


class ReloadState:
    """One process's carry-over store: typed cells keyed by ``(kind, key)`` (module doc)."""

    def __init__(self) -> None:
        self._cells: dict[tuple[AuthMethod, Hashable], object] = {}

    def cell(self, kind: AuthMethod, key: Hashable, factory: Callable[[], T], cls: type[T]) -> T:
        """The cell of ``kind`` under ``key``, made by ``factory`` on first use.

        ``cls`` is the cell's type: a cell of another type under the same key (a kind that
        changed what it keeps) is replaced rather than handed out as the wrong thing.
        """
        slot = (kind, key)
        found = self._cells.get(slot)
        if isinstance(found, cls):
            return found
        made = factory()
        self._cells[slot] = made
        return made
