"""Children that do not outlive their parent (Linux ``prctl(PR_SET_PDEATHSIG)``).

Used by the supervised gRPC front's Envoy (:mod:`extauthz.grpcfront.supervisor`) and the demo's
processes (:mod:`extauthz.demo.procs`): when extauthz or the demo dies without cleaning up, the
kernel signals the child, so no Envoy is left holding the ports.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

__all__ = ["AVAILABLE", "die_with_parent"]


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


#: resolved once in the parent: the child must not import anything between fork and exec
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
#: whether the platform can do it (elsewhere the hook is a no-op)
AVAILABLE = _PRCTL is not None


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when its parent dies."""

    def hook() -> None:  # pragma: no cover (runs in the child, between fork and exec)
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, sig)

    return hook
