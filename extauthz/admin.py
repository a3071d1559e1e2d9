"""The HTTP admin endpoint: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``.

Liveness never depends on configuration or dependencies (a restart would not fix them);
readiness is true only while a valid configuration is loaded and the server is not draining.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extauthz.metrics import Metrics


def make_admin_app(metrics: Metrics, is_ready: Callable[[], bool]) -> web.Application:
    """Build the aiohttp application of the admin endpoint."""

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
