"""Shared state across replicas: Redis-backed replay cache, attempt limiter and revocation lists.

Without ``settings.redis`` everything stays in memory (each replica on its own) and this package
only contributes the file-based revocation list (``settings.revocation_file``)::

    snapshot.py ── build_state(settings) ──> SnapshotState  (BuildContext.state)
                                                     ├─ nonce_store(owner)      RedisNonceStore
                                                     ├─ attempt_limiter(owner)  RedisAttemptLimiter
                                                     └─ revocations             RevocationList
                                                          ├─ file entries (dict lookups)
                                                          └─ RedisRevocations (synced mirror)
    StateHub (one per process) ── RedisClient (one pool per target; bounded calls; health flag)

The provider protocol and :class:`SharedStateUnavailable` are declared on the authenticators'
side (:mod:`~extauthz.authn.shared_state`) and implemented here. Modules:
:mod:`~extauthz.state.redis` (client and hub), :mod:`~extauthz.state.stores` (nonces,
attempts), :mod:`~extauthz.state.revocation` (lists, file format, ``extauthz revoke``),
:mod:`~extauthz.state.provision` (building it from the configuration). redis-py is imported only
when a Redis client is started.
"""

from extauthz.authn.shared_state import Revocations, SharedStateUnavailable, StateProvider

__all__ = ["Revocations", "SharedStateUnavailable", "StateProvider"]
