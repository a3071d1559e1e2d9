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
* one :class:`~extauthz.authn.attempts.InMemoryAttemptLimiter` per Basic authenticator name;
  a reload applies its new limits to the existing counts.

Single event loop, like the stores themselves. (Objects are *built* in the compile worker thread,
but compiles are serialized by the server's reload lock and only look objects up or create them.)
"""

from __future__ import annotations

from extauthz.authn.attempts import InMemoryAttemptLimiter
from extauthz.authn.nonces import MemoryNonceStore
from extauthz.clock import Clock


class LocalState:
    """The process's in-memory replay cache and attempt limiters (module docstring)."""

    def __init__(self) -> None:
        self._nonces: MemoryNonceStore | None = None
        self._limiters: dict[str, InMemoryAttemptLimiter] = {}

    def nonce_store(self, clock: Clock) -> MemoryNonceStore:
        """The process's replay cache (created on first use)."""
        if self._nonces is None:
            self._nonces = MemoryNonceStore(clock)
        else:
            self._nonces.rebind_clock(clock)
        return self._nonces

    def attempt_limiter(
        self, owner: str, *, max_failures: int, window_seconds: float, max_keys: int,
        clock: Clock,
    ) -> InMemoryAttemptLimiter:
        """The limiter of the Basic authenticator ``owner``, with these limits from now on."""
        found = self._limiters.get(owner)
        if found is None:
            found = InMemoryAttemptLimiter(
                max_failures, window_seconds, max_keys=max_keys, clock=clock
            )
            self._limiters[owner] = found
        else:
            found.reconfigure(max_failures, window_seconds, max_keys)
            found.rebind_clock(clock)
        return found
