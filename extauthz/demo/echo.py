"""The echo upstream: answers every request with JSON describing what it received.

It stands in for the protected application behind Envoy, so a test (or a curious human) can see
exactly what reached the upstream after ext_authz: the identity headers extauthz injected, and the
absence of credentials and of spoofed ``x-auth-*`` headers. Response body::

    {"upstream": "echo", "method": "GET", "path": "/reports/q1", "query": "a=1",
     "raw_target": "/reports/q1?a=1",
     "headers": {"x-auth-subject": "demo-client", ...},      # lowercased names
     "header_list": [["x-auth-subject", "demo-client"], ...],  # as received, repeats kept
     "body_bytes": 0}

In ``headers`` a repeated header's values are joined with ``", "``.

Run alone: ``python -m extauthz.demo.echo --port 18080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from aiohttp import web

from extauthz.demo.background import UPSTREAM_HEADER_LIMIT, BackgroundApp

DEFAULT_PORT = 18080


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    payload: dict[str, Any] = {
        "upstream": "echo",
        "method": request.method,
        "path": request.path,
        # the path exactly as it arrived (still percent-encoded): what a servlet-style upstream
        # parses, e.g. its ;parameters
        "raw_path": request.raw_path.partition("?")[0],
        "query": request.query_string,
        # the request target exactly as received, query included (``query`` above is decoded)
        "raw_target": request.raw_path,
        "headers": headers,
        "header_list": [[k.lower(), v] for k, v in request.headers.items()],
        "body_bytes": len(body),
    }
    return web.json_response(payload)


def make_echo_app() -> web.Application:
    """An application that echoes any method on any path."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


def start_echo(host: str = "127.0.0.1", port: int = 0) -> BackgroundApp:
    """Start the echo server in a background thread (``port=0``: a free one)."""
    return BackgroundApp(make_echo_app, host, port, name="echo").start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="extauthz demo echo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)

    async def run() -> None:
        runner = web.AppRunner(make_echo_app(), access_log=None,
                               max_line_size=UPSTREAM_HEADER_LIMIT,
                               max_field_size=UPSTREAM_HEADER_LIMIT)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"echo upstream on http://{args.host}:{args.port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
