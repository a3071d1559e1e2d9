"""htpasswd files: parsing (strict) and password verification.

Accepted line formats (one user per line; blank lines and lines starting with ``#`` are skipped)::

    alice:$2y$10$<53 chars>          bcrypt ($2a$, $2b$, $2y$; cost 4-17)  -- `htpasswd -B`
    bob:{SHA}<base64 of SHA-1>       unsalted SHA-1 (Envoy's basic_auth format) -- `htpasswd -s`

Everything else is refused when the file is loaded, with a :class:`ValueError` naming the line
number and the format that was recognised (never the hash itself): plaintext, DES ``crypt``,
MD5-based ``$apr1$``/``$1$``, SHA-crypt ``$5$``/``$6$``, and anything unrecognisable. A username
is everything before the first ``:``, so a username containing ``:`` cannot be expressed (and
would be ambiguous in a Basic credential, RFC 7617 §2); a user listed twice is refused.

``{SHA}`` is fast and unsalted: prefer bcrypt. It exists so the file Envoy's own ``basic_auth``
filter reads can be reused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import bcrypt

#: bcrypt only uses the first 72 bytes of a password; longer ones are refused, not truncated (a
#: truncating comparison would accept ``password + anything``).
BCRYPT_MAX_PASSWORD_BYTES = 72

#: htpasswd's own range for ``-C`` (a higher cost would take seconds per check).
MIN_BCRYPT_COST = 4
MAX_BCRYPT_COST = 17

_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_SHA = re.compile(r"^\{SHA\}([A-Za-z0-9+/]{27}=)$")
_CTL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class HtpasswdEntry:
    """One user's stored password hash."""

    user: str
    scheme: Literal["bcrypt", "sha1"]
    hashed: bytes  # the bcrypt hash (ASCII) or the 20-byte SHA-1 digest
    cost: int = 0  # bcrypt cost (0 for sha1)
    line: int = 0

    def verify(self, password: str) -> bool:
        """Whether ``password`` matches. bcrypt entries are slow: call off the event loop."""
        raw = password.encode("utf-8")
        if self.scheme == "sha1":
            digest = hashlib.sha1(raw, usedforsecurity=False).digest()
            return hmac.compare_digest(digest, self.hashed)
        return check_bcrypt(raw, self.hashed)

    def __repr__(self) -> str:  # never show the hash
        return f"HtpasswdEntry(user={self.user!r}, scheme={self.scheme!r}, line={self.line})"


def check_bcrypt(password: bytes, hashed: bytes) -> bool:
    """``bcrypt.checkpw``, refusing (not truncating) passwords over 72 bytes."""
    if len(password) > BCRYPT_MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(password, hashed)


def _refused_format(hashed: str) -> str:
    """A name for an unsupported hash format (to tell the operator what to fix)."""
    if hashed.startswith("$apr1$"):
        return "MD5 (apr1)"
    if hashed.startswith("$1$"):
        return "MD5-crypt"
    if hashed.startswith(("$5$", "$6$")):
        return "SHA-crypt"
    if hashed.startswith("$2"):
        return "malformed bcrypt"
    if hashed.startswith("{SHA}"):
        return "malformed {SHA}"
    if hashed.startswith("$"):
        return "unknown crypt"
    if re.fullmatch(r"[./A-Za-z0-9]{13}", hashed):
        return "DES crypt (or plaintext)"
    return "plaintext or unknown"


def parse_htpasswd(text: str) -> dict[str, HtpasswdEntry]:
    """Parse htpasswd content; raises ValueError("line N: ...") on the first refused line."""
    users: dict[str, HtpasswdEntry] = {}
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep:
            raise ValueError(f"line {number}: expected 'user:hash'")
        if not user:
            raise ValueError(f"line {number}: empty username")
        if _CTL.search(user) or user != user.strip():
            raise ValueError(
                f"line {number}: username has control characters or surrounding spaces"
            )
        if user in users:
            raise ValueError(
                f"line {number}: duplicate user {user!r} (first on line {users[user].line})"
            )
        if ":" in hashed:
            raise ValueError(f"line {number}: unexpected ':' after the hash (extra fields)")
        if (m := _BCRYPT.match(hashed)) is not None:
            cost = int(m.group(1))
            if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
                raise ValueError(
                    f"line {number}: bcrypt cost {cost} outside "
                    f"{MIN_BCRYPT_COST}-{MAX_BCRYPT_COST}"
                )
            users[user] = HtpasswdEntry(user, "bcrypt", hashed.encode("ascii"), cost, number)
        elif (m := _SHA.match(hashed)) is not None:
            try:
                digest = base64.b64decode(m.group(1), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"line {number}: malformed {{SHA}} hash") from None
            users[user] = HtpasswdEntry(user, "sha1", digest, 0, number)
        else:
            raise ValueError(
                f"line {number}: unsupported password format ({_refused_format(hashed)}); "
                "use bcrypt (htpasswd -B) or {SHA} (htpasswd -s)"
            )
    return users


def load_htpasswd(path: Path) -> dict[str, HtpasswdEntry]:
    """Read and parse an htpasswd file (UTF-8); errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ValueError(f"{path}: cannot read ({reason})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8") from None
    try:
        return parse_htpasswd(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def dummy_bcrypt_hash(entries: Mapping[str, HtpasswdEntry]) -> bytes | None:
    """A bcrypt hash of a random password at the most common cost of ``entries`` (ties: higher).

    Verifying an unknown user against it costs what verifying a real user costs, so response
    time does not reveal which usernames exist. ``None`` when there are no bcrypt entries.
    """
    costs = Counter(e.cost for e in entries.values() if e.scheme == "bcrypt")
    if not costs:
        return None
    cost = max(costs, key=lambda c: (costs[c], c))
    return bcrypt.hashpw(secrets.token_hex(16).encode("ascii"), bcrypt.gensalt(rounds=cost))
