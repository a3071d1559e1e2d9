"""The only reader of CheckRequest protos: turns one into a frozen :class:`RequestView`.

Envoy facts this relies on (verified against Envoy 1.40, see DESIGN.md §4):

* ``http.headers`` carries every request header, pseudo-headers included, keys lowercase,
  repeated headers joined with ``,``. With ``encode_raw_headers: true`` they come only in
  ``http.header_map`` with ``raw_value`` bytes; both forms are read.
* ``http.path`` includes the query string; ``http.query`` and ``http.fragment`` are always empty.
* ``http.id`` is Envoy's stream id; the request id is the ``x-request-id`` header.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from extauthz.errors import BadRequestError, Reason
from extauthz.paths import path_problem
from extauthz.types import Headers, RequestView

#: More query parameters than this is refused (400) rather than parsed.
MAX_QUERY_PARAMS = 256


def split_host(authority: str) -> str:
    """Lowercase ``authority`` and strip any port (IPv6 literals keep their brackets)."""
    host = authority.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    head, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return head
    return host


def _size(data: dict[str, str], names: str) -> int:
    """Bytes of the names and values as they were on the wire (UTF-8; raw bytes that were not
    UTF-8 are surrogate escapes, one byte each). ASCII, the usual case, is counted by length
    (``names``: every name joined, the caller has it; joined, the test is one C call)."""
    values = "".join(data.values())
    if names.isascii() and values.isascii():
        return len(names) + len(values)
    # per string: _wire_length's fallback for a lone surrogate applies to its own string only
    return sum(map(_wire_length, (*data, *data.values())))


def _wire_length(text: str) -> int:
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate that is no escape: 3 bytes, never an error
        return len(text.encode("utf-8", "surrogatepass"))


def _headers(http: Any) -> tuple[Headers, int]:
    """The headers, and the bytes of their names and values (for ``limits``)."""
    if http.headers:
        # Envoy already lowercases keys; trust that (hot path) but normalise if not.
        data = dict(http.headers)
        names = "".join(data)
        size = _size(data, names)
        # some name is not lowercase iff the joined names are not (lower() maps each character
        # on its own, final sigma aside, which never maps to itself): one C call, not a loop
        if names.lower() != names:
            return Headers(data), size
        return Headers.from_lowercase(data), size
    # Envoy joins repeated headers with "," in the map form; do the same for the raw form (in
    # one join per name: concatenating as they come would be quadratic in the repeats).
    parts: dict[str, list[str]] = {}
    for header in http.header_map.headers:
        raw = header.raw_value
        value = raw.decode("utf-8", "surrogateescape") if raw else header.value
        parts.setdefault(header.key.lower(), []).append(value)
    data = {key: values[0] if len(values) == 1 else ",".join(values)
            for key, values in parts.items()}
    size = _size(data, "".join(data))
    return Headers.from_lowercase(data), size


def from_check_request(request: Any) -> RequestView:
    """Build a RequestView from an ``envoy.service.auth.v3.CheckRequest``."""
    attrs = request.attributes
    http = attrs.request.http
    headers, header_bytes = _headers(http)
    raw_path = http.path or headers.get(":path", "/")
    path, _, raw_query = raw_path.partition("?")
    path, _, _fragment = path.partition("#")
    query = MappingProxyType(_parse_query(raw_query)) if raw_query else MappingProxyType({})
    authority = http.host or headers.get(":authority", "") or headers.get("host", "")
    body = http.raw_body or http.body.encode("utf-8", "surrogateescape")
    source = attrs.source
    return RequestView(
        method=(http.method or headers.get(":method", "")).upper(),
        host=split_host(authority),
        path=path or "/",
        raw_query=raw_query,
        query=query,
        scheme=http.scheme or headers.get(":scheme", "http"),
        headers=headers,
        source_address=source.address.socket_address.address,
        source_principal=source.principal,
        peer_certificate=source.certificate,
        context_extensions=MappingProxyType(dict(attrs.context_extensions)),
        body=body,
        request_id=headers.get("x-request-id", ""),
        protocol=http.protocol,
        header_bytes=header_bytes,
    )


def _parse_query(raw_query: str) -> dict[str, str]:
    # First occurrence wins; a credential parameter repeated with a different value is rejected by
    # the authenticator that reads it, not silently resolved here.
    out: dict[str, str] = {}
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, max_num_fields=MAX_QUERY_PARAMS)
    except ValueError as exc:
        raise BadRequestError(Reason.BAD_REQUEST, "too many query parameters") from exc
    for key, value in pairs:
        out.setdefault(key, value)
    return out


# An RFC 8941 string (escapes included), or one of the characters that give it a role.
# Possessive quantifiers: no backtracking, so one pass is linear even on hostile input.
_SF_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*+"?|[()=]', re.DOTALL)
_CAVAGE_HEADERS = re.compile(r'(?:^|[\s,])headers\s*+=\s*+"([^"]*+)"', re.IGNORECASE)


def signature_components(headers: Headers) -> int:
    """The most components one HTTP message signature in ``headers`` covers (0: none).

    RFC 9421: the string items of each inner list in ``Signature-Input`` (parameter values,
    which follow ``=``, are not items). draft-cavage: the names in the ``headers`` parameter of
    ``Authorization: Signature ...`` or of the ``Signature`` header. Counting only: malformed
    input yields some count and is refused later by the authenticator that parses it. Linear in
    the header length (one regex pass), and never raises.
    """
    most = 0
    raw = headers.value("signature-input")
    if raw:
        depth = count = 0
        previous = ""
        for match in _SF_TOKENS.finditer(raw):
            part = match.group()
            if part == "(":
                depth, count = depth + 1, 0
            elif part == ")":
                depth = max(0, depth - 1)
                most = max(most, count)
            elif part[0] == '"' and depth and previous != "=":
                count += 1
            previous = part[0]
        most = max(most, count)  # an unterminated inner list
    for name in ("authorization", "signature"):
        value = headers.value(name)
        if value and (found := _CAVAGE_HEADERS.search(value)) is not None:
            most = max(most, len(found.group(1).split()))
    return most


def path_is_normalized(path: str) -> bool:
    """True when ``path`` is one extauthz judges with the default ``settings.paths``: no
    dot-segments or empty segments, no encoded ``/``, ``\\`` or ``.``, no ``;`` path
    parameters, no ``%25`` (see :func:`extauthz.paths.path_problem`, which says why)."""
    return path_problem(path) is None
