"""A minimal blocking HTTP client for the demo's self-check and the end-to-end tests.

``http.client`` rather than ``urllib``: urllib raises on 4xx/5xx, follows redirects and adds
headers of its own; here we want exactly the status, *every* response header (a 401 may carry one
``WWW-Authenticate`` per method) and the body, for exactly the request we wrote.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP response. Header names are lowercased; repeats are kept in order."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def problem(self) -> dict[str, Any]:
        """The ``application/problem+json`` body as a dict ({} when absent or not JSON)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def reason(self) -> str | None:
        """The problem body's ``reason`` member (extauthz's Reason code), if any."""
        value = self.problem().get("reason")
        return value if isinstance(value, str) else None


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    """Send one request on a fresh connection and read the whole response."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.putrequest(method, target, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(
            status=resp.status,
            headers=tuple((k.lower(), v) for k, v in resp.getheaders()),
            body=data,
        )
    finally:
        conn.close()


def get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Response:
    return request("GET", url, headers, timeout=timeout)
