"""What the client sent that must not reach the upstream, in every spelling the upstream may read.

Envoy removes headers and query parameters by their **exact** name (``headers_to_remove``,
``x-envoy-auth-headers-to-remove``, ``query_parameters_to_remove``), but upstreams do not read
names exactly: a CGI/WSGI/PHP application reads ``x_auth_subject``, ``X-Auth-Subject`` and
``x-auth.subject`` all as ``HTTP_X_AUTH_SUBJECT`` (and joins a spoofed value with the real one);
PHP decodes ``api%5Fkey`` and ``api.key`` in a query string or a cookie to ``api_key``. The client's
names arrive in the check request, so the functions here find every client-sent name whose
*canonical* form is reserved and return those exact names for removal.

Canonical forms:

* header names: lower case, ``_`` and ``.`` read as ``-`` (:func:`canonical_header`);
* query parameter and cookie names: percent-decoded (``+`` is a space), lower case, ``.``, space
  and ``[`` read as ``_`` (:func:`canonical_param`), which is what PHP does.

Identity values (:func:`identity_value_safe`): a value with a control character, surrounding
spaces, or that is not valid Unicode cannot be sent as a header the same way on both transports
(CR/LF/NUL could split or truncate it; HTTP/1 strips surrounding spaces), so a check whose
identity has one is denied (``identity_not_representable``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

#: C0 controls, DEL and the C1 controls (U+0080-U+009F): CR, LF, NUL, TAB, ESC, NEL, ...
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PARAM_SEPARATORS = str.maketrans(". [", "___")
_COOKIE_SEPARATOR = re.compile(r"[;,]")


def canonical_header(name: str) -> str:
    """The header name as a CGI-style upstream reads it (``X_Auth.Subject``: ``x-auth-subject``)."""
    # two replace() calls: several times faster than str.translate on short names (hot path)
    return name.lower().replace("_", "-").replace(".", "-")


def canonical_names(names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Each header name (already lower case, as in :class:`~extauthz.types.Headers`) with its
    canonical form.

    Remembered per set of names (bounded): a client sends the same header names request after
    request, and this runs on every allowed check.
    """
    key = tuple(names)
    known = _CANONICAL.get(key)
    if known is None:
        known = tuple((n, n.replace("_", "-").replace(".", "-")) for n in key)
        if _rememberable(key):
            if len(_CANONICAL) >= _MAX_REMEMBERED:  # a new name set costs one computation
                _CANONICAL.clear()
            _CANONICAL[key] = known
    return known


#: header names as sent -> canonical_names(): at most _MAX_REMEMBERED sets of names, each of at
#: most _MAX_REMEMBERED_CHARS characters (a client choosing new long names every request gets
#: them computed every request, and holds at most ~1 MiB here)
_CANONICAL: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_MAX_REMEMBERED = 256
_MAX_REMEMBERED_CHARS = 2048


def _rememberable(names: tuple[str, ...]) -> bool:
    return len(names) <= 128 and sum(map(len, names)) <= _MAX_REMEMBERED_CHARS


def canonical_param(name: str) -> str:
    """A query parameter or cookie name as the most lenient upstream reads it (``api%5Fkey``,
    ``API.KEY`` -> ``api_key``)."""
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="surrogateescape")
    return name.lower().translate(_PARAM_SEPARATORS)


class ReservedHeaders:
    """The identity header namespace and every configured identity header name, canonically.

    Built once per configuration snapshot (:meth:`spoofed` runs on every allowed check).
    """

    __slots__ = ("_names", "_prefix", "_reserved_in")

    def __init__(self, prefix: str, names: Iterable[str]) -> None:
        self._prefix = canonical_header(prefix)
        self._names = frozenset(canonical_header(n) for n in names)
        #: canonical_names() output -> its reserved names (bounded; see spoofed)
        self._reserved_in: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}

    def envoy_regex(self) -> str:
        """An RE2 regex (Envoy ``safe_regex``) matching every reserved name in every spelling,
        for routes with ext_authz disabled, which extauthz never sees (Envoy stores header
        names in lower case, so case needs nothing)."""
        def spelled(canonical: str) -> str:
            return "[-_.]".join(re.escape(part) for part in canonical.split("-"))
        prefix = spelled(self._prefix.rstrip("-")) + "[-_.].*"
        names = sorted(n for n in self._names if not n.startswith(self._prefix))
        return "|".join([prefix, *(spelled(n) for n in names)])

    def reserved(self, name: str) -> bool:
        """Whether a header called ``name`` (any spelling) is extauthz's to set."""
        canonical = canonical_header(name)
        return canonical.startswith(self._prefix) or canonical in self._names

    def spoofed(self, client: Iterable[tuple[str, str]],
                keep: frozenset[str] | set[str]) -> list[str]:
        """The client's header names (exactly as sent) that are reserved, except ``keep`` (the
        exact names extauthz sets itself: Envoy overwrites those). ``client``: the output of
        :func:`canonical_names`."""
        reserved = self._reserved_in.get(client) if isinstance(client, tuple) else None
        if reserved is None:
            prefix, names = self._prefix, self._names
            reserved = tuple(n for n, c in client if c.startswith(prefix) or c in names)
            if isinstance(client, tuple) and _rememberable(tuple(n for n, _ in client)):
                # remembered per set of names, bounded like canonical_names
                if len(self._reserved_in) >= _MAX_REMEMBERED:
                    self._reserved_in.clear()
                self._reserved_in[client] = reserved
        return [n for n in reserved if n not in keep]


def header_spellings(client: Iterable[tuple[str, str]], wanted: Iterable[str]) -> list[str]:
    """The client's header names whose canonical form is one of ``wanted``'s (e.g. every
    spelling of a credential header: ``x_api_key`` for ``x-api-key``). ``client``: the output
    of :func:`canonical_names`."""
    targets = _canonical_headers(wanted if isinstance(wanted, tuple) else tuple(wanted))
    if not targets:
        return []
    return [n for n, c in client if c in targets]


@functools.lru_cache(maxsize=1024)
def _canonical_headers(names: tuple[str, ...]) -> frozenset[str]:
    """The canonical forms of an authenticator's credential headers: the same few tuples (one
    per authenticator of the configuration) on every allowed check."""
    return frozenset(canonical_header(n) for n in names)


def query_spellings(raw_query: str, params: Iterable[str],
                    decoded_names: Iterable[str] = ()) -> list[str]:
    """Every name in ``raw_query`` (exactly as written, and decoded) that reads as one of
    ``params`` (``api%5Fkey``, ``API_KEY``, ``api.key`` for ``api_key``); ``decoded_names``
    (the parsed query's names) are matched too.

    Envoy 1.40's ``query_parameters_to_remove`` compares the name exactly as written in the
    request (verified: ``api_key`` does not remove ``api%5Fkey``, ``api%5Fkey`` does); the
    decoded form is listed too so the removal does not depend on that (the end-to-end tests
    check what the upstream receives).
    """
    if not raw_query and not decoded_names:
        return []
    targets = {canonical_param(p) for p in params}
    if not targets:
        return []
    out: dict[str, None] = {}
    for name in decoded_names:
        if canonical_param(name) in targets:
            out[name] = None
    for pair in raw_query.split("&"):
        raw_name = pair.partition("=")[0]
        if raw_name and canonical_param(raw_name) in targets:
            out[raw_name] = None
            out[unquote_plus(raw_name, errors="surrogateescape")] = None
    return list(out)


def query_hides(raw_query: str, params: Iterable[str]) -> bool:
    """True when a credential parameter hides after a ``;`` inside another parameter
    (``?page=2;api_key=K``): Envoy splits the query on ``&`` only and cannot remove it, while
    upstreams that also split on ``;`` (older Python, some Java and Ruby stacks) read it."""
    if ";" not in raw_query:
        return False
    targets = {canonical_param(p) for p in params}
    for pair in raw_query.split("&"):
        for part in pair.split(";")[1:]:
            if canonical_param(part.partition("=")[0].strip()) in targets:
                return True
    return False


def without_cookies(raw: str, names: Iterable[str]) -> str | None:
    """``raw`` (a Cookie header) without any cookie whose name reads as one of ``names``.

    None: nothing to remove. ``""``: every cookie was a credential (remove the header).
    """
    targets = {canonical_param(n) for n in names}
    # "," too: Envoy joins repeated Cookie headers of an HTTP/1.1 request with ","
    parts = [p.strip() for p in _COOKIE_SEPARATOR.split(raw)]
    parts = [p for p in parts if p]
    kept = [p for p in parts if canonical_param(p.partition("=")[0].strip()) not in targets]
    if len(kept) == len(parts):
        return None
    return "; ".join(kept)


def identity_value_safe(value: str) -> bool:
    """True when ``value`` can be an identity header value on both transports: no control
    character (CR, LF, NUL, TAB, DEL, C1), no leading or trailing space (HTTP/1 parsers strip
    it, so the upstream would see another value than an HTTP/2 one), and encodable as UTF-8
    (no lone surrogates)."""
    if value.isascii() and value.isprintable():  # the common case, without the regex
        return value[:1] != " " and value[-1:] != " "
    if _CONTROL.search(value) is not None or value[:1] == " " or value[-1:] == " ":
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
