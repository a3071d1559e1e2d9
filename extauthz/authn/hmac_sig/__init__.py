"""HTTP request signatures with shared keys: RFC 9421 ``hmac-sha256`` and a draft-cavage profile.

One module per concern:

* :mod:`.rfc9421` — profile ``rfc9421`` (default): ``Signature-Input`` / ``Signature``;
* :mod:`.cavage` — profile ``cavage``: Kong's and APISIX's ``hmac-auth`` clients;
* :mod:`.components` — component values and the RFC 9421 signature base (:func:`signature_base`,
  :func:`sign`: public, so clients and tests sign with exactly the same code);
* :mod:`.checks` — keys and what both protocols check the same way (time, body, nonce);
* :mod:`.authenticator` — :class:`HmacAuthenticator`, which dispatches to the profile's protocol.
"""

from extauthz.authn.hmac_sig.authenticator import HmacAuthenticator
from extauthz.authn.hmac_sig.checks import (
    ALGORITHM,
    MAX_COMPONENTS,
    MAX_HEADER_LENGTH,
    MAX_NONCE_LENGTH,
    HmacKey,
)
from extauthz.authn.hmac_sig.components import (
    ComponentError,
    derived_value,
    sign,
    signature_base,
)

__all__ = [
    "ALGORITHM",
    "MAX_COMPONENTS",
    "MAX_HEADER_LENGTH",
    "MAX_NONCE_LENGTH",
    "ComponentError",
    "HmacAuthenticator",
    "HmacKey",
    "derived_value",
    "sign",
    "signature_base",
]
