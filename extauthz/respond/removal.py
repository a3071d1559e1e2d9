"""What Envoy can remove from the upstream request: one rule for both renderers.

Envoy never removes a pseudo-header (``:authority``, ``:path``...) or ``host``, whatever the
authorization answer asks (a request without them is malformed): gRPC's ``headers_to_remove`` and
the HTTP transport's ``x-envoy-auth-headers-to-remove`` alike. Neither renderer lists them, so
both encodings of one decision say the same thing (docs/envoy-wire-facts.md).
"""

from __future__ import annotations

__all__ = ["removable"]

_UNREMOVABLE = frozenset({"host"})


def removable(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` without the ones Envoy refuses to remove (pseudo-headers and ``host``).

    ``names`` itself when there are none (the usual case: no copy, nothing allocated).
    """
    for name in names:
        if name.startswith(":") or name in _UNREMOVABLE:
            return tuple(n for n in names if not n.startswith(":") and n not in _UNREMOVABLE)
    return names
