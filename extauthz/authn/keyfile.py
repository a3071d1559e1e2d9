"""API keys from a JSON Lines file, read one line at a time (``api_key.keys_file``).

A configuration with 100 000 keys under ``consumers`` costs a whole-document YAML parse and a
pydantic model per key; this file is read as a stream instead: one JSON object per line, checked
and turned into its compact stored form before the next line is read, so the memory held is the
keys themselves (docs/memory.md has the figures). One line::

    {"consumer": "acme", "id": "k1", "hash": "sha256:<64 hex>", "scopes": ["orders:read"],
     "expires_at": "2030-01-01T00:00:00Z", "disabled": false}

``consumer``, ``id`` and ``hash`` are required (the same rules as a key under ``consumers``:
names of 1-64 ``[A-Za-z0-9_.:-]`` starting with a letter or digit, only the SHA-256 of the key —
``extauthz keys generate`` prints it; plaintext keys are refused); ``scopes``, ``expires_at``
(RFC 3339 with a timezone) and ``disabled`` are optional; any other member is refused. Blank
lines and lines starting with ``#`` are skipped. A bad line stops the load with
``<file>:<line>: <what is wrong>`` — never the line itself. The consumer need not be declared
under ``consumers`` (declare it there to give it a rate-limit plan).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["KeyFileError", "KeyLine", "read_key_file"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # fullmatch; schema.py's Name
_HASH = re.compile(r"sha256:[0-9a-f]{64}")  # fullmatch; schema.py's ApiKeyEntry.hash
_MEMBERS = frozenset({"consumer", "id", "hash", "scopes", "expires_at", "disabled"})
#: longest line read (a key line is ~150 bytes; this bounds what one bad line can cost)
MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class KeyLine:
    """One key of the file, checked."""

    line: int
    consumer: str
    key_id: str
    digest: bytes
    scopes: tuple[str, ...]
    expires_at: float | None
    disabled: bool


class KeyFileError(ValueError):
    """A line of the keys file is not a valid key (the message is ``file:line: problem``)."""


def read_key_file(path: Path) -> Iterator[KeyLine]:
    """The keys of ``path``, one line at a time; :class:`KeyFileError` (a ValueError) names the
    file and line of the first bad one, ``OSError`` when the file cannot be read."""
    with path.open("rb") as stream:
        number = 0
        while raw := stream.readline(MAX_LINE_BYTES + 2):  # the bound, and its CR LF, at most
            number += 1
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                yield _key_line(number, line)
            except ValueError as exc:
                raise KeyFileError(f"{path}:{number}: {exc}") from None


def _key_line(number: int, line: bytes) -> KeyLine:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError("not a JSON object (one key per line)") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object (one key per line)")
    unknown = sorted(str(k) for k in doc if k not in _MEMBERS)
    if unknown:
        raise ValueError(f"unknown member(s) {', '.join(unknown)[:200]}")
    consumer = _name(doc, "consumer")
    key_id = _name(doc, "id")
    hashed = doc.get("hash")
    if not isinstance(hashed, str) or not _HASH.fullmatch(hashed):
        raise ValueError("hash: must be 'sha256:<64 lowercase hex>' (see `extauthz keys "
                         "generate`); plaintext keys are never accepted")
    disabled = doc.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ValueError("disabled: must be true or false")
    return KeyLine(
        line=number,
        consumer=sys.intern(consumer),  # shared by the keys of one consumer
        key_id=key_id,
        digest=bytes.fromhex(hashed[7:]),
        scopes=_scopes(doc.get("scopes", [])),
        expires_at=_expiry(doc.get("expires_at")),
        disabled=disabled,
    )


def _name(doc: dict[str, Any], member: str) -> str:
    value = doc.get(member)
    if value is None:
        raise ValueError(f"{member}: is required")
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{member}: must be 1-64 characters of A-Z a-z 0-9 _ . : - "
                         "starting with a letter or digit")
    return value


def _scopes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("scopes: must be a list of strings")
    return tuple(value)


def _expiry(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expires_at: must be an RFC 3339 date-time string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("expires_at: must be an RFC 3339 date-time string") from None
    if when.tzinfo is None:
        raise ValueError("expires_at: must include a timezone, e.g. 2030-01-01T00:00:00Z")
    return when.timestamp()
