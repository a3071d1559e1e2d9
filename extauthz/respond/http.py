"""The HTTP encoding of a decision: Decision -> Envoy's HTTP ext_authz answer (HTTP/1.1 bytes).

Side by side with :mod:`extauthz.respond.grpc` (the CheckResponse of the same decision);
tests/unit/test_respond.py renders one table of decisions through both. What Envoy does with the
answer (``http_service``, Envoy 1.40):

* **allow**: ``200`` with the headers to set on the upstream request (Envoy copies those matching
  ``authorization_response.allowed_upstream_headers``, overwriting), the headers to remove in
  :data:`REMOVE_HEADER` (comma-separated; pseudo-headers and ``host`` are never listed, as on
  gRPC: :func:`~extauthz.respond.removal.removable`) and the headers for the client's response
  (RateLimit fields: ``allowed_client_headers_on_success``);
* **deny**: the decision's status, its headers (one ``www-authenticate`` per challenge,
  ``retry-after``) and its problem body, which Envoy passes to the client;
* a 5xx is an error to Envoy: the client gets ``status_on_error`` and not our body.

What this protocol cannot carry is refused (503 ``internal_error``) rather than dropped: removing
a query parameter, and a rewritten ``cookie`` unless Envoy is known to forward it (see
:func:`render`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from extauthz.decision import Decision, from_error
from extauthz.respond.removal import removable

__all__ = ["METADATA_PREFIX", "REASONS", "REMOVE_HEADER", "render"]

log = logging.getLogger("extauthz.http_authz")

#: the header through which Envoy removes headers from the upstream request on allow
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
#: response headers carrying the decision's dynamic metadata (Envoy:
#: ``authorization_response.dynamic_metadata_from_headers``), one per top-level member
METADATA_PREFIX = "x-extauthz-md-"
#: the reason phrases of the statuses this server answers with
REASONS: Mapping[int, str] = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable"}
#: one encoder: json.dumps with non-default arguments builds a new one per call (~3 us)
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _metadata_lines(metadata: Mapping[str, Any]) -> list[str]:
    """The decision's dynamic metadata as ``x-extauthz-md-<member>`` lines (ASCII JSON)."""
    lines = []
    for key, value in metadata.items():
        text = value if isinstance(value, str) else _COMPACT_JSON.encode(value)
        name = METADATA_PREFIX + key.replace("_", "-")
        # ensure_ascii JSON has no control characters; a plain string member is checked here
        if text.isprintable() and text.isascii():
            lines.append(f"{name}: {text}")
        else:
            lines.append(f"{name}: {_COMPACT_JSON.encode(text)}")
    return lines


def _sets_cookie(headers: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``headers`` rewrite the ``cookie`` header (a loop: no generator per check)."""
    for name, _ in headers:  # noqa: SIM110 (any() would build a generator per check)
        if name == "cookie":
            return True
    return False


def _refused(decision: Decision) -> Decision:
    """The 503 of an allow this protocol cannot carry out (logged): never half of it."""
    if decision.remove_query:
        # HTTP mode cannot drop query parameters: refuse rather than leak the credential
        log.error("route %s strips a query-string credential, which the HTTP transport cannot "
                  "do (use gRPC for this route); refused", decision.route)
    else:
        log.error("route %s strips a credential cookie, which needs Envoy to forward the "
                  "rewritten cookie header (allowed_upstream_headers: cookie) and "
                  "--http-authz-cookie-forwarded; refused", decision.route)
    return from_error(RuntimeError(), decision.route)


def render(decision: Decision, keep_alive: bool, head: bool = False,
           cookie_forwarded: bool = False, metadata: bool = False) -> bytes:
    """The HTTP/1.1 response that makes Envoy carry out ``decision``.

    ``head``: the check request was a HEAD, so the response has no body (its
    ``content-length`` still says how long the body would be, as HTTP specifies for HEAD).
    Header values are UTF-8 (what Envoy sends upstream for gRPC's protobuf strings); the
    pipeline has already refused identity values with control characters.
    ``cookie_forwarded``: Envoy's ``allowed_upstream_headers`` matches ``cookie``, so a
    rewritten Cookie header (a credential cookie removed) is applied; without it such a
    decision is refused, since Envoy would silently keep the client's cookie, credential
    included. ``metadata``: send the dynamic metadata as ``x-extauthz-md-*`` headers (about
    3 us per allowed check; only useful with Envoy's ``dynamic_metadata_from_headers``).
    """
    if decision.allowed and (decision.remove_query or (
            not cookie_forwarded and _sets_cookie(decision.upstream_headers))):
        decision = _refused(decision)
    lines: list[str]
    if decision.allowed:
        payload = b""
        lines = ["HTTP/1.1 200 OK"]
        lines.extend(f"{k}: {v}" for k, v in decision.upstream_headers)
        if decision.remove_headers:
            names = ",".join(removable(decision.remove_headers))
            if names:
                lines.append(f"{REMOVE_HEADER}: {names}")
        # for the client's response (RateLimit fields): allowed_client_headers_on_success
        lines.extend(f"{k}: {v}" for k, v in decision.response_headers)
        if metadata and decision.dynamic_metadata:
            lines.extend(_metadata_lines(decision.dynamic_metadata))
    else:
        payload = decision.body.encode()
        status = decision.http_status
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Denied')}"]
        lines.extend(f"{k}: {v}" for k, v in decision.response_headers)
    lines.append(f"content-length: {len(payload)}")
    if not keep_alive:
        lines.append("connection: close")
    head_block = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return head_block if head else head_block + payload
