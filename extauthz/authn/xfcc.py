"""A generic parser for Envoy's ``x-forwarded-client-cert`` (XFCC) header — **not** the one that
decides who the client is.

Envoy 1.40 writes ``URI=``/``DNS=`` values unquoted, so a certificate name holding ``,`` ``;``
``=`` or ``"`` changes how this grammar splits the header: it cannot tell which element a proxy
wrote. Authentication reads XFCC with :mod:`extauthz.authn.xfcc_trust` (the header as Envoy
writes it, names anchored to each element's own certificate, under the configured trust
model). This module stays for tools, tests and diagnostics (and shows the ambiguity in
tests/e2e/test_e2e_xfcc_trust.py).

Grammar (Envoy's format; see DESIGN.md §4)::

    xfcc    = element *( "," element )
    element = pair *( ";" pair )
    pair    = key "=" ( quoted / token )
    key     = By / Hash / Cert / Chain / Subject / URI / DNS      (case-insensitive)
    quoted  = DQUOTE *( any char except DQUOTE and "\\" / "\\" char ) DQUOTE
    token   = *( any char except DQUOTE "," ";" "=" )

* Values that contain ``,`` ``;`` or ``=`` are double-quoted; inside quotes ``\\"`` stands for a
  quote and ``\\\\`` for a backslash. Any other backslash is kept as it is, so an RFC 4514 escape
  in a ``Subject`` (``CN=a\\,b``) survives unchanged.
* Spaces and tabs around elements and pairs (outside quotes) are ignored: a proxy that joins
  repeated headers may insert them.
* ``Cert`` and ``Chain`` are URL-encoded PEM; they are decoded here with percent-decoding only
  (never ``+`` → space: ``+`` is a base64 character).
* ``By``, ``URI`` and ``DNS`` may repeat within an element; the other keys may not. An empty value
  (Envoy writes ``URI=`` for a certificate without a URI SAN) is treated as absent.
* Unknown keys, empty elements, stray quotes, a header over :data:`MAX_XFCC_LENGTH` characters or
  with more than :data:`MAX_ELEMENTS` elements are refused.

:func:`parse_xfcc` raises only :class:`XfccError`, whose message is public-safe: it names an offset
or a key, never echoes the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

#: Longest header accepted (Envoy's default request-header limit is 60 KiB).
MAX_XFCC_LENGTH = 128 * 1024
#: Most elements accepted (one per proxy hop that appended one).
MAX_ELEMENTS = 64

_KEYS = {
    "by": "by",
    "hash": "hash",
    "cert": "cert",
    "chain": "chain",
    "subject": "subject",
    "uri": "uri",
    "dns": "dns",
}
_REPEATABLE = frozenset({"by", "uri", "dns"})
# Written so that a failed match backtracks in linear time (no two adjacent quantifiers can
# trade the same characters): unquoted values are stripped in Python, not by the pattern.
_PAIR = re.compile(
    r'[ \t]*([A-Za-z]+)[ \t]*=(?:"((?:[^"\\]|\\.)*)"[ \t]*|([^",;=]*))(?=[,;]|\Z)',
    re.DOTALL,
)
_UNESCAPE = re.compile(r'\\(["\\])')


class XfccError(ValueError):
    """The header does not follow the XFCC grammar (message is safe to log and return)."""


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One XFCC element: the client certificate one proxy saw. ``cert``/``chain`` are PEM text."""

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def parse_xfcc(header: str) -> list[XfccElement]:
    """Parse a whole XFCC header into its elements, in order (the last is the nearest proxy's)."""
    if len(header) > MAX_XFCC_LENGTH:
        raise XfccError(f"header longer than {MAX_XFCC_LENGTH} characters")
    if not header.strip(" \t"):
        raise XfccError("empty header")
    elements: list[XfccElement] = []
    current: dict[str, list[str]] = {}
    pos, end = 0, len(header)
    while True:
        match = _PAIR.match(header, pos)
        if match is None:
            raise XfccError(_unexpected(header, pos))
        key = _KEYS.get(match.group(1).lower())
        if key is None:
            raise XfccError(f"unknown key at offset {match.start(1)}")
        quoted, bare = match.group(2), match.group(3)
        value = bare.strip(" \t") if quoted is None else _UNESCAPE.sub(r"\1", quoted)
        values = current.setdefault(key, [])
        if values and key not in _REPEATABLE:
            raise XfccError(f"duplicate key {match.group(1)!r} in element {len(elements) + 1}")
        values.append(value)
        pos = match.end()
        if pos == end:
            elements.append(_element(current))
            return elements
        if header[pos] == ",":
            elements.append(_element(current))
            if len(elements) >= MAX_ELEMENTS:
                raise XfccError(f"more than {MAX_ELEMENTS} elements")
            current = {}
        pos += 1  # past "," or ";" (the lookahead guarantees one of them)


def _unexpected(header: str, pos: int) -> str:
    rest = header[pos:].lstrip(" \t")
    offset = len(header) - len(rest)
    if not rest or rest[0] in ",;":
        return f"expected key=value at offset {offset}"
    quote_at = header.find('"', pos)
    if quote_at != -1:
        return f"unbalanced or misplaced double quote near offset {quote_at}"
    return f"malformed pair at offset {offset}"


def _element(pairs: dict[str, list[str]]) -> XfccElement:
    def one(key: str) -> str | None:
        values = pairs.get(key)
        return values[0] if values and values[0] else None

    def many(key: str) -> tuple[str, ...]:
        return tuple(v for v in pairs.get(key, ()) if v)

    return XfccElement(
        by=many("by"),
        hash=one("hash"),
        cert=_pem(one("cert"), "Cert"),
        chain=_pem(one("chain"), "Chain"),
        subject=one("subject"),
        uri=many("uri"),
        dns=many("dns"),
    )


def _pem(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    try:
        decoded = unquote(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise XfccError(f"{key} is not URL-encoded UTF-8") from None
    if "-----BEGIN CERTIFICATE-----" not in decoded:
        raise XfccError(f"{key} is not a URL-encoded PEM certificate")
    return decoded


def format_xfcc(elements: list[XfccElement]) -> str:
    """Render elements in XFCC syntax (the inverse of :func:`parse_xfcc`; for tests and tools)."""
    from urllib.parse import quote

    rendered = []
    for element in elements:
        pairs = [("By", v) for v in element.by]
        if element.hash is not None:
            pairs.append(("Hash", element.hash))
        if element.cert is not None:
            pairs.append(("Cert", quote(element.cert, safe="")))
        if element.chain is not None:
            pairs.append(("Chain", quote(element.chain, safe="")))
        if element.subject is not None:
            pairs.append(("Subject", element.subject))
        pairs += [("URI", v) for v in element.uri]
        pairs += [("DNS", v) for v in element.dns]
        rendered.append(";".join(f"{k}={_format_value(v)}" for k, v in pairs))
    return ",".join(rendered)


def _format_value(value: str) -> str:
    if value and not any(c in value for c in ',;="\\ \t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
