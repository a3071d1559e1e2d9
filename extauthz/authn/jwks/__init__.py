"""JSON Web Key Sets: parsing keys with care, and keeping an issuer's keys fresh.

One module per responsibility:

* :mod:`.verifiers` — the algorithm families and one prepared verifier per algorithm; strict
  base64url;
* :mod:`.keys` — :func:`parse_jwks`: a JWK Set into immutable :class:`JwkKey` objects (a key that
  must not be used is skipped with its reason, never its material) and the :class:`KeySet`
  indexes;
* :mod:`.sources` — the :class:`JwksSource` contract and :class:`StaticJwks` (``file``,
  ``inline``);
* :mod:`.remote` — :class:`RemoteJwks` (``url``, ``discovery``): background refresh, staleness,
  rate-limited refetch, last good keys across reloads;
* :mod:`.discovery` — OpenID Connect Discovery (``jwks_uri``, checked);
* :mod:`.build` — :func:`jwks_source_from_spec`.

Cache invalidation: a refresh that returns a key identical to one already held (same kid, type and
public material) reuses the existing :class:`JwkKey` object, so a verified-token cache can pin the
key object it verified with and check ``key in keyset.live`` — a key dropped from the set at a
refresh invalidates exactly the tokens it signed, nothing else.
"""

from extauthz.authn.jwks.build import jwks_source_from_spec
from extauthz.authn.jwks.discovery import discovery_url
from extauthz.authn.jwks.keys import (
    MAX_KEYS,
    MAX_KEYS_PER_KID,
    JwkKey,
    KeySet,
    load_static_keyset,
    parse_jwks,
)
from extauthz.authn.jwks.remote import (
    MAX_BACKOFF_SECONDS,
    MAX_DOCUMENT_BYTES,
    LastGoodKeys,
    RemoteJwks,
)
from extauthz.authn.jwks.sources import JwksSource, StaticJwks
from extauthz.authn.jwks.verifiers import ALGORITHMS, b64url_decode

__all__ = [
    "ALGORITHMS",
    "MAX_BACKOFF_SECONDS",
    "MAX_DOCUMENT_BYTES",
    "MAX_KEYS",
    "MAX_KEYS_PER_KID",
    "JwkKey",
    "JwksSource",
    "KeySet",
    "LastGoodKeys",
    "RemoteJwks",
    "StaticJwks",
    "b64url_decode",
    "discovery_url",
    "jwks_source_from_spec",
    "load_static_keyset",
    "parse_jwks",
]
