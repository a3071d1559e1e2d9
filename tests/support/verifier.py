"""An upstream that trusts nothing but a verified identity token (the docs' upstream side).

It discovers extauthz's keys the way an application would (``/.well-known/openid-configuration``
on extauthz's admin port -> ``jwks_uri``), verifies the token in the configured header with PyJWT
(algorithms pinned, ``iss`` and ``aud`` required) and answers::

    200 {"upstream": "verifier", "claims": {...}, "headers": {...}}   token valid
    401 {"upstream": "verifier", "error": "<PyJWT exception name>"}    anything else

The JWKS is fetched for every request (``cache_jwk_set=False``) so a test sees a key rotation at
once; a production upstream caches it (PyJWKClient's ``lifespan``) for less than the rotation
grace period.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import jwt
from aiohttp import web

from extauthz.demo.background import BackgroundApp

TOKEN_HEADER = "x-auth-identity-token"


class Verifier:
    """The verifying upstream's settings (kept outside the app: it is rebuilt on restart)."""

    def __init__(self, discovery_url: str, issuer: str, audience: str,
                 header: str = TOKEN_HEADER) -> None:
        self.discovery_url = discovery_url
        self.issuer = issuer
        self.audience = audience
        self.header = header

    def verify(self, token: str) -> dict[str, Any]:
        """The upstream side in a few lines (docs/identity-token.md shows the same)."""
        with urllib.request.urlopen(self.discovery_url, timeout=5) as resp:
            jwks_uri = json.load(resp)["jwks_uri"]
        signing_key = jwt.PyJWKClient(jwks_uri, cache_jwk_set=False).get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token, signing_key.key, algorithms=["ES256", "EdDSA"],
            issuer=self.issuer, audience=self.audience,
            options={"require": ["iss", "aud", "sub", "exp", "iat", "jti"]})
        return claims

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            token = headers.get(self.header)
            if token is None:
                return web.json_response({"upstream": "verifier", "error": "no token"},
                                         status=401)
            try:
                claims = await asyncio.to_thread(self.verify, token)
            except (jwt.PyJWTError, OSError, KeyError, ValueError) as exc:
                return web.json_response({"upstream": "verifier", "error": type(exc).__name__},
                                         status=401)
            return web.json_response({"upstream": "verifier", "claims": claims,
                                      "headers": headers})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


def start_verifier(verifier: Verifier) -> BackgroundApp:
    """Serve ``verifier`` on a free port in a background thread."""
    return BackgroundApp(verifier.app, name="verifier").start()
