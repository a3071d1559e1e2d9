"""Application logs as JSON lines: :class:`JsonFormatter` and :func:`configure_logging`.

One event per line on stderr (the decision log keeps its own stream, stdout)::

    {"time": 1796000000.123456, "level": "WARNING", "logger": "extauthz.server",
     "message": "not ready until ...", "exception": "Traceback ... (when there is one)"}

Redaction follows the decision log's rule, "no credential, no query value, ever": a log message
is free text, so instead of an allow-list of fields every message (and traceback) goes through
:func:`redact`, which blanks what a credential looks like — JWTs, ``Bearer``/``Basic``/``Digest``
credentials, extauthz API keys (``eak_...``), PEM blocks, ``name=value`` pairs whose name says
secret (password, token, api_key, signature, cookie, authorization, ...), and query values in
URLs (``?a=1&b=2`` -> ``?a=&b=``, as the decision log writes paths). Messages are built by code
that already avoids logging credentials; this is the second line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import IO

#: ``--log-format`` choices
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_REDACTED = "[redacted]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.S), _REDACTED),
    # a JWS/JWE: base64url JSON header "eyJ..." then dot-separated segments
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,4}"), _REDACTED),
    (re.compile(r"\b(Bearer|Basic|Digest|DPoP|ApiKey|Signature)\s+[^\s,;\"']+", re.I),
     r"\1 " + _REDACTED),
    (re.compile(r"\beak_[A-Za-z0-9_-]+"), _REDACTED),
    (re.compile(
        r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key|apikey|signature|cookie|"
        r"authorization|credential|session)[\w-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;]+)"),
     r"\1\2" + _REDACTED),
    # query values in a URL or path: keep the keys (like the decision log's paths)
    (re.compile(r"(?<=[?&])([^=&\s#?]+)=[^&\s#]*"), r"\1="),
)


#: a superset of what any pattern above can match (lowercase): most messages contain none of
#: them, and a few substring tests are far cheaper than even one case-insensitive regex search
_TRIGGERS = ("eyj", "begin", "bearer", "basic", "digest", "dpop", "apikey", "api_key", "api-key",
             "signature", "eak_", "password", "passwd", "secret", "token", "cookie",
             "authorization", "credential", "session", "?", "&")


def redact(text: str) -> str:
    """``text`` with every credential-shaped part and every query value blanked."""
    lowered = text.lower()
    if not any(word in lowered for word in _TRIGGERS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (newlines inside are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            event["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            event["exception"] = redact(record.exc_text)
        if record.stack_info:
            event["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


class RedactingTextFormatter(logging.Formatter):
    """The plain-text format, with the same redaction as :class:`JsonFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` ``fmt`` (``text`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return RedactingTextFormatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(FORMATS)})")


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Install the root handler: ``level`` and ``fmt`` (``text``/``json``), on stderr.

    The only place the application's log handler is set up (``extauthz.cli.main`` calls it).
    On stderr the handler never blocks (:mod:`extauthz.logsetup`: a bounded queue and a writer
    thread; issue 13.6); an explicit ``stream`` gets a plain stream handler.
    """
    if stream is None:
        from extauthz import logsetup

        if logsetup.install(level, make_formatter(fmt)):
            return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    # like basicConfig always did here: a no-op when the root logger already has a handler
    logging.basicConfig(level=level, handlers=[handler])
