"""A fake identity provider for tests: serves a JWK Set and an OIDC discovery document over HTTP
on 127.0.0.1 (ephemeral port), with switches for outages, delays and a lying discovery document.

    async with FakeIdP(jwks(rsa_key("k1"))) as idp:
        spec = {"issuer": idp.issuer, "jwks": {"url": idp.jwks_url}, ...}
        idp.jwks = jwks(rsa_key("k2"))      # rotate
        idp.status = 503                    # outage (any non-200 status)
        idp.delay = 0.2                     # slow IdP (seconds, per request)
        idp.redirect_jwks = "http://..."    # /jwks.json answers 302 to there
        assert idp.jwks_hits == 1

    FakeIdP(jwks, ssl_context=ctx)          # https://localhost:<port> (certificate for localhost)
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from types import TracebackType
from typing import Any

from aiohttp import web


class FakeIdP:
    """An aiohttp server; ``issuer`` is its base URL (``http://127.0.0.1:<port>``)."""

    def __init__(
        self, jwks: dict[str, Any] | None = None, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.jwks: dict[str, Any] = jwks if jwks is not None else {"keys": []}
        self._ssl = ssl_context
        #: /jwks.json answers ``redirect_status`` with ``Location: redirect_jwks``
        self.redirect_jwks: str | None = None
        self.redirect_status = 302
        #: overrides the ``jwks_uri`` of the discovery document
        self.discovery_jwks_uri: str | None = None
        self.status = 200
        self.delay = 0.0
        #: overrides the ``issuer`` of the discovery document (default: the real base URL)
        self.discovery_issuer: str | None = None
        #: overrides the raw JWKS response body (e.g. b"not json")
        self.raw_body: bytes | None = None
        #: send the JWKS body chunked, without Content-Length
        self.chunked = False
        self.jwks_hits = 0
        self.discovery_hits = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def issuer(self) -> str:
        if self._ssl is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks.json"

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.redirect_jwks is not None:
            return web.Response(status=self.redirect_status,
                                headers={"Location": self.redirect_jwks})
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = self.raw_body if self.raw_body is not None else json.dumps(self.jwks).encode()
        if self.chunked:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for start in range(0, len(body), 65536):
                await resp.write(body[start : start + 65536])
            await resp.write_eof()
            return resp
        return web.Response(body=body, content_type="application/json")

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        self.discovery_hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.json_response(
            {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.discovery_jwks_uri or self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def start(self) -> FakeIdP:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self._ssl).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeIdP:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def unused_port() -> int:
    """A 127.0.0.1 port nothing listens on (for "IdP down" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 (ephemeral port); returns its runner (``cleanup()`` stops it)
    and the port. For one-off endpoints such as a fake introspection server."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, port
