"""Paths extauthz will not judge: the ones a backend may resolve to another resource.

A route is chosen, and a policy applied, by the path as it arrives; the upstream serves the path
as *it* parses it. Whenever the two can differ, the decision would be about the wrong resource,
so the check is refused (400 ``bad_request``) before routing. :func:`path_problem` says why a
path is refused (or ``None``); :mod:`extauthz.pipeline` calls it on every check, on both
transports.

Always refused (no backend needs them, and Envoy's ``normalize_path`` / ``merge_slashes`` /
``path_with_escaped_slashes_action: REJECT_REQUEST`` never sends them):

* dot segments and empty segments (``/a/../b``, ``/a/./b``, ``/a//b``), also with path
  parameters (``/..;/``, ``/.;x/``, ``/;x/``: servlet containers drop the parameters first,
  then resolve the dots);
* an encoded ``.``, ``/`` or ``\\`` (``%2e``, ``%2f``, ``%5c``), a ``\\``, a control character;
* a ``%`` that starts no escape (``%zz``, ``%%32%65``: some decoders leave the ``%`` and decode
  what follows, making a new escape) and escapes that decode to invalid UTF-8 (``%c0%ae``, an
  overlong ``.`` that old decoders accept).

Refused by default, allowed by an option (``settings.paths``), because some upstreams need them:

* ``;`` or ``%3B`` (``allow_semicolon``): path parameters. Servlet containers (Tomcat, Jetty,
  Spring) serve ``/admin;x=1/secret`` as ``/admin/secret`` while a prefix ``/admin/`` does not
  match it. Allow only if your upstream treats ``;`` as an ordinary character, or strips the
  parameters *and* every route still holds for the stripped path. Dot and empty segments with
  parameters stay refused.
* ``%25``, an encoded ``%`` (``allow_encoded_percent``): a backend, or a proxy behind Envoy, that
  decodes once more turns ``%252e%252e`` into ``..``. Allow it for literal ``%`` in names
  (``/files/100%25.txt``); ``%25`` followed by the escape of ``. / \\ ; %``, of a control
  character or of a non-ASCII byte stays refused.

The same rule is mirrored in Envoy by the first route of every shipped route table (a regex that
sends such paths to a checked route even under a prefix whose ext_authz is disabled); the unit
tests pin the two to one vector list.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

#: control characters (never in a path Envoy accepts)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: every escape worth a closer look, in one pass: a ``%`` that starts no escape, or the escape
#: of ``.``, ``/``, ``\``, ``%``, ``;`` or a control character
_ESCAPE_SUSPECT = re.compile(r"%(?![0-9a-fA-F]{2})|%(?:2[eEfF5]|5[cC]|3[bB]|[01][0-9a-fA-F]|7[fF])")
#: a ``%`` not followed by two hex digits
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
#: escapes of ``.``, ``/``, ``\`` (always refused) -- lowercased input
_ENCODED_SEPARATOR = re.compile(r"%(?:2e|2f|5c)")
#: ``%25`` followed by the escape of ``. / \ ; %``, a control character or a non-ASCII byte:
#: what a second decoding would turn into a separator or a new escape (lowercased input)
_DOUBLE_ENCODED = re.compile(r"%25(?:2e|2f|5c|3b|25|[01][0-9a-f]|7f|[89a-f][0-9a-f])")
#: the escape of a control character (lowercased input)
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9a-f]|7f)")
#: a percent-escape of a byte >= 0x80 (then the decoded path must be valid UTF-8)
_HIGH_ESCAPE = re.compile(r"%[89a-fA-F][0-9a-fA-F]")
_DOT_OR_EMPTY = ("//", "/./", "/../")


def path_problem(
    path: str, *, allow_semicolon: bool = False, allow_encoded_percent: bool = False
) -> str | None:
    """Why ``path`` (without its query string) is refused, or None when it is unambiguous.

    The answer is a short public phrase (``"dot segment"``, ``"path parameter (;)"``, ...) for
    the problem body and ``--explain``; it never repeats the path.
    """
    if "\\" in path:
        return "backslash"
    if _CONTROL.search(path) is not None:
        return "control character"
    if "%" in path:
        problem = _escape_problem(path, allow_encoded_percent)
        if problem is not None:
            return problem
    elif ";" not in path:
        # the usual path: no escape, no parameter; dot and empty segments by substring
        if any(s in path for s in _DOT_OR_EMPTY) or path.endswith(("/.", "/..")):
            return _segment_problem(path)
        return None
    lowered = path.lower()
    has_parameters = ";" in path or "%3b" in lowered
    if has_parameters and not allow_semicolon:
        return "path parameter (;)"
    return _segment_problem(lowered.replace("%3b", ";") if has_parameters else path)


def _escape_problem(path: str, allow_encoded_percent: bool) -> str | None:
    if _ESCAPE_SUSPECT.search(path) is not None:
        lowered = path.lower()
        if _BAD_ESCAPE.search(path) is not None:
            return "malformed percent-encoding"
        if _ENCODED_SEPARATOR.search(lowered) is not None:
            return "encoded '.', '/' or '\\'"
        if "%25" in lowered:
            if not allow_encoded_percent:
                return "encoded '%'"
            if _DOUBLE_ENCODED.search(lowered) is not None:
                return "double percent-encoding"
        if _ENCODED_CONTROL.search(lowered) is not None:
            return "encoded control character"
    if _HIGH_ESCAPE.search(path) is not None:
        try:
            unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return "percent-encoding that is not UTF-8"
    return None


def _segment_problem(path: str) -> str | None:
    """Dot or empty segments, judged on each segment's name with its ``;parameters`` removed."""
    segments = path.split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        name, parameters, _ = segment.partition(";")
        if name in (".", ".."):
            return "dot segment"
        if not name and (parameters or 0 < index < last):
            return "empty segment"
    return None
