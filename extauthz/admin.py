"""The HTTP admin endpoint: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``,
and, when ``settings.identity_token`` is configured, the identity token's public keys at
``/.well-known/jwks.json`` and OIDC-style discovery at ``/.well-known/openid-configuration``
(404 when it is not; docs/identity-token.md).

Liveness never depends on configuration or dependencies (a restart would not fix them);
readiness is true only while a valid configuration is loaded and the server is not draining.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extauthz.idtoken import IdentityTokens
from extauthz.metrics import Metrics

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: upstreams cache the keys; a short max-age keeps a rotation (a new key first) visible soon
_KEYS_CACHE = "public, max-age=60"


def make_admin_app(
    metrics: Metrics,
    is_ready: Callable[[], bool],
    identity_tokens: Callable[[], IdentityTokens | None] | None = None,
) -> web.Application:
    """Build the aiohttp application of the admin endpoint.

    ``identity_tokens``: returns the serving snapshot's identity tokens (read per request, so a
    reload that rotates keys is published at once).
    """

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    def tokens_or_404() -> IdentityTokens:
        tokens = identity_tokens() if identity_tokens is not None else None
        if tokens is None:
            raise web.HTTPNotFound(text="identity tokens are not configured\n")
        return tokens

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(tokens_or_404().jwks(), content_type="application/jwk-set+json",
                                 headers={"Cache-Control": _KEYS_CACHE})

    async def discovery(request: web.Request) -> web.Response:
        tokens = tokens_or_404()
        derived = f"{request.scheme}://{request.host}{JWKS_PATH}"
        return web.json_response(tokens.discovery(derived), headers={"Cache-Control": _KEYS_CACHE})

    app = web.Application()
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get(DISCOVERY_PATH, discovery)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
