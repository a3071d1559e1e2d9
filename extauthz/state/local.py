"""Per-process in-memory state that must outlive configuration reloads.

Without Redis, the HMAC replay cache and the Basic attempt counters live in memory. Kept inside
an authenticator object they would be thrown away with it on every reload — and anything that
triggers a reload (a config edit, a rotated Secret, SIGHUP, ``extauthz revoke`` appending to the
watched revocation file) would re-open replay windows and hand an attacker fresh attempts. So the
server's :class:`~extauthz.state.redis.StateHub` owns one :class:`LocalState` for the process
and every snapshot's authenticators draw from it:

* one :class:`~extauthz.authn.nonces.MemoryNonceStore` for the process, scoped by signing key
  (key id + secret fingerprint): renaming an authenticator or moving a key between
  authenticators forgets no nonce;
* the failure counts of each Basic authenticator (by name); each configuration's
  :class:`~extauthz.authn.attempts.InMemoryAttemptLimiter` applies its own limits to them.

The objects are cells of the process's :class:`~extauthz.authn.reload_state.ReloadState` (the
server's), next to what the authenticators themselves carry across reloads. Single event loop,
like the stores themselves. (Objects are *built* in the compile worker thread,
but compiles are serialized by the server's reload lock and only look objects up or create them.)
"""

from __future__ import annotations

from collections import OrderedDict, deque

from extauthz.authn.attempts import InMemoryAttemptLimiter
from extauthz.authn.nonces import MemoryNonceStore
from extauthz.authn.reload_state import ReloadState
from extauthz.clock import Clock
from extauthz.types import AuthMethod

#: the process's replay cache: one, whatever the authenticator (scoped by signing key inside)
_PROCESS_NONCES = "process nonce store"


class LocalState:
    """The process's in-memory replay cache and attempt counters (module docstring).

    Called from the compile worker thread: it only looks objects up or creates them (dict
    ``setdefault``, atomic), never changes one the event loop is using.
    """

    def __init__(self, reload_state: ReloadState | None = None) -> None:
        #: where the objects live: the process's carry-over store (the server's), so the
        #: process has one place for what outlives a configuration
        self._state = reload_state if reload_state is not None else ReloadState()

    def nonce_store(self, clock: Clock) -> MemoryNonceStore:
        """The process's replay cache (created on first use, with that clock)."""
        return self._state.cell(AuthMethod.HMAC, _PROCESS_NONCES,
                                lambda: MemoryNonceStore(clock), MemoryNonceStore)

    def attempt_limiter(
        self, owner: str, *, max_failures: int, window_seconds: float, max_keys: int,
        clock: Clock,
    ) -> InMemoryAttemptLimiter:
        """A limiter with this configuration's limits over the failure counts of the Basic
        authenticator ``owner`` (shared with the limiters of earlier configurations)."""
        failures: OrderedDict[str, deque[float]] = self._state.cell(
            AuthMethod.BASIC, owner, OrderedDict, OrderedDict)
        return InMemoryAttemptLimiter(
            max_failures, window_seconds, max_keys=max_keys, clock=clock, failures=failures
        )
