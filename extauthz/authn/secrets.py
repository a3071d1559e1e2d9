"""Loading secrets (HMAC keys, OAuth client secrets) from files or environment variables.

Secrets are never written inline in the configuration (the schema refuses it): a configuration
file is shared, diffed, logged and committed; a secret belongs in a mounted Kubernetes Secret or
an environment variable. Secrets are read once, when the configuration is compiled (a reload
re-reads them, so rotating a mounted Secret and reloading picks up the new value).

Encodings (``*_encoding`` in the configuration):

=========== ==========================================================================
``raw``     the bytes as stored, minus trailing CR/LF (``echo secret > file`` works)
``base64``  standard base64 (whitespace ignored), e.g. RFC 9421's test key
``base64url`` URL-safe base64, padding optional
``hex``     hexadecimal (whitespace ignored)
=========== ==========================================================================

Error messages name the file or variable and the problem, never the secret's content.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

SecretEncoding = Literal["raw", "base64", "base64url", "hex"]

#: a larger "secret file" is almost certainly the wrong file
MAX_SECRET_FILE_BYTES = 64 * 1024


def decode_secret(raw: bytes, encoding: SecretEncoding) -> bytes:
    """Decode stored secret bytes; ``ValueError`` (without the content) when malformed."""
    if encoding == "raw":
        return raw.rstrip(b"\r\n")
    compact = b"".join(raw.split())
    try:
        if encoding == "hex":
            return binascii.unhexlify(compact)
        if encoding == "base64":
            return base64.b64decode(compact, validate=True)
        padded = compact.rstrip(b"=") + b"=" * (-len(compact.rstrip(b"=")) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is not valid {encoding}") from None


def load_secret(
    *,
    file: str | None,
    env: str | None,
    encoding: SecretEncoding = "raw",
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """Read one secret from ``file`` (relative to ``base_dir``) or the variable ``env``.

    Exactly one of ``file`` and ``env`` must be given. Raises ``ValueError`` with a message naming
    the source (never the content) when it is missing, unreadable, empty or badly encoded.
    """
    if file is not None and env is None:
        path = Path(file)
        if not path.is_absolute():
            path = base_dir / path
        where = f"secret file {str(path)!r}"
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ValueError(f"{where}: cannot read ({reason})") from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise ValueError(f"{where}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    elif env is not None and file is None:
        where = f"environment variable {env}"
        source = os.environ if environ is None else environ
        value = source.get(env)
        if value is None:
            raise ValueError(f"{where} is not set")
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raise ValueError("set exactly one of a secret file or a secret environment variable")
    try:
        secret = decode_secret(raw, encoding)
    except ValueError as exc:
        raise ValueError(f"{where} {exc}") from None
    if not secret:
        raise ValueError(f"{where} is empty")
    return secret
