"""Metadata lookups run before a route's policy: OIDC UserInfo and templated HTTP calls.

The answer (a JSON value) becomes ``metadata.<lookup name>`` for rules, CEL and AuthZEN
templates. A 404 answer is ``null`` (cached for ``negative_ttl_seconds``: a negative cache);
any other failure follows the lookup's ``on_error``.

UserInfo is called with the caller's own bearer token (``Authorization: Bearer``); the answer's
``sub`` must equal the verified identity's subject (OIDC Core 5.3.2), otherwise it is refused.
Answers are cached per token (its SHA-256, never the token itself). A lookup that sends a
credential (UserInfo, or configured headers) never follows a redirect, whatever
``settings.outbound.follow_redirects`` says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from extauthz.config.external import LookupSpec
from extauthz.external.cache import CallFailed
from extauthz.external.client import Target
from extauthz.external.mapping import RenderError, Template, compile_template
from extauthz.external.metrics import ExternalMetrics
from extauthz.outbound import OutboundPolicy
from extauthz.types import RequestView

_PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x1f\x7f]")


def url_segment(value: str) -> str:
    """Percent-encode a value substituted into a URL: everything but unreserved characters,
    and ``.`` too, so ``..`` cannot become a dot-segment."""
    return quote(value, safe="").replace(".", "%2E")


def _header_text(value: str) -> str:
    if _HEADER_VALUE_BAD.search(value):
        raise RenderError("a header value would hold a control character")
    return value


class Lookup(Target):
    """One configured lookup."""

    kind = "lookup"

    def __init__(self, name: str, spec: LookupSpec, policy: OutboundPolicy,
                 metrics: ExternalMetrics) -> None:
        if spec.userinfo is not None or (spec.http is not None and spec.http.headers):
            # a lookup sending a credential (the caller's token, configured headers) is never
            # redirected: the credential would follow the redirect to wherever it points
            policy = dataclasses.replace(policy, follow_redirects=False)
        super().__init__(name, spec, policy, metrics)
        self.spec = spec
        self.on_error = spec.on_error
        self.names: frozenset[str] = frozenset({"identity"})
        self._url: Template | None = None
        self._headers: dict[str, Template] = {}
        self._body: Template | None = None
        if spec.userinfo is not None:
            policy.check_url(spec.userinfo.url, "userinfo.url")
        elif spec.http is not None:
            http = spec.http
            authority = http.url.split("//", 1)[-1].split("/", 1)[0]
            if "{{" in authority or "{{" in http.url.split("//", 1)[0]:
                raise ValueError("http.url: the scheme and host must be literal (templates only "
                                 "after the host)")
            policy.check_url(_PLACEHOLDER.sub("x", http.url), "http.url")
            self._url = compile_template(http.url, "http.url")
            self._headers = {k.lower(): compile_template(v, f"http.headers.{k}")
                             for k, v in http.headers.items()}
            if http.body is not None:
                self._body = compile_template(http.body, "http.body")
            names: set[str] = set()
            for template in (self._url, self._body, *self._headers.values()):
                if template is not None:
                    names |= template.names
            self.names = frozenset(names)

    async def resolve(self, data: Mapping[str, Any], view: RequestView) -> Any:
        """The lookup's value for this request; raises :class:`CallFailed` or RenderError."""
        if self.spec.userinfo is not None:
            return await self._userinfo(data, view)
        return await self._http(data)

    async def _userinfo(self, data: Mapping[str, Any], view: RequestView) -> Any:
        if self.spec.userinfo is None:
            raise CallFailed("error", f"lookup {self.name}: not a UserInfo lookup")
        url = self.spec.userinfo.url
        header = view.headers.value("authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CallFailed("refused", f"lookup {self.name}: no bearer token to call UserInfo")
        key = "u:" + hashlib.sha256(token.encode()).hexdigest()

        async def call() -> Any:
            status, body = await self.exchange(
                "GET", url, headers={"authorization": f"Bearer {token}"})
            if status != 200 or not isinstance(body, dict):
                raise self.fail("invalid", f"UserInfo answered {status}")
            return body

        claims = await self.cached(key, call)
        subject = data.get("identity", {}).get("subject")
        if not isinstance(claims, dict) or claims.get("sub") != subject:
            raise CallFailed("invalid", f"lookup {self.name}: UserInfo sub does not match")
        return claims

    async def _http(self, data: Mapping[str, Any]) -> Any:
        if self._url is None or self.spec.http is None:
            raise CallFailed("error", f"lookup {self.name}: not an HTTP lookup")
        url = self._url.render(data, url_segment)
        if not isinstance(url, str):
            raise RenderError("the URL template did not give text")
        headers = {k: _header_text(str(t.render(data))) for k, t in self._headers.items()}
        body = self._body.render(data) if self._body is not None else None
        method = self.spec.http.method
        key = f"{method} {url} " + json.dumps(body, sort_keys=True, separators=(",", ":"))
        if headers:
            key += " " + hashlib.sha256(json.dumps(headers, sort_keys=True).encode()).hexdigest()

        async def call() -> Any:
            status, parsed = await self.exchange(method, url, headers=headers, body=body)
            if status == 404:
                return None  # negative cache: remembered for negative_ttl_seconds
            if not 200 <= status < 300:
                raise CallFailed("error", f"lookup {self.name}: answered {status}")
            if parsed is None:
                raise self.fail("invalid", "the answer is not JSON")
            return parsed

        return await self.cached(key, call)
