"""API key material: generation and the at-rest hash format.

Keys are 256-bit random secrets, so a fast cryptographic hash is the right at-rest form (a slow
password hash buys nothing against brute force of a 256-bit space, and would cost every request).
The stored form is ``sha256:<hex>``; the plaintext is shown once, at generation.
"""

from __future__ import annotations

import hashlib
import secrets

#: Prefix of generated keys: makes them recognisable to secret scanners and in support tickets.
KEY_PREFIX = "eak_"


def generate_api_key() -> str:
    """Return a new random API key (``eak_`` + 43 URL-safe characters = 256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The at-rest form of ``key``: ``sha256:<64 hex>``."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_hmac_secret() -> str:
    """Return a new random HMAC secret (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)
