"""What Envoy 1.40 does with an HTTP authorization answer that asks to remove ``host``.

Both renderers (extauthz/respond/) leave pseudo-headers and ``host`` out of what they ask Envoy
to remove (:func:`extauthz.respond.removal.removable`): the gRPC one always did
(docs/envoy-wire-facts.md), the HTTP one did not. This pins, through the real Envoy and
deploy/envoy/envoy-http-authz.yaml, what an answer that names ``host``, ``:authority`` and
``:path`` in ``x-envoy-auth-headers-to-remove`` would have done: Envoy ignores those names (the
request is forwarded as sent, ``host`` included) and removes the others. A stand-in
authorization server gives that answer: extauthz itself no longer can."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import EnvoyPorts, render_config, start_envoy
from extauthz.demo.httpclient import get
from extauthz.demo.procs import LOOPBACK, free_ports
from extauthz.respond.http import REMOVE_HEADER
from tests.support.transports import ENVOY_HTTP_CONFIG


def _authorizer() -> web.Application:
    async def allow(request: web.Request) -> web.Response:
        return web.Response(status=200, headers={REMOVE_HEADER: "host,:authority,:path,x-drop-me"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", allow)
    return app


@pytest.fixture(scope="module")
def envoy_port(e2e_dir: Path, echo: BackgroundApp) -> Iterator[int]:
    authorizer = BackgroundApp(_authorizer, LOOPBACK, 0, name="authorizer").start()
    listener, admin = free_ports(2)
    ports = EnvoyPorts(listener=listener, admin=admin, extauthz=authorizer.port, echo=echo.port)
    config = e2e_dir / "envoy.yaml"
    config.write_text(render_config(ports, ENVOY_HTTP_CONFIG))
    envoy = start_envoy(config, admin_port=admin, log_path=e2e_dir / "envoy.log")
    try:
        yield listener
    finally:
        envoy.stop()
        authorizer.close()


def test_envoy_ignores_host_and_pseudo_headers_to_remove_and_removes_the_rest(
    envoy_port: int,
) -> None:
    response = get(f"http://{LOOPBACK}:{envoy_port}/anything",
                   {"x-drop-me": "1", "x-keep-me": "1"})
    assert response.status == 200, response.body[:300]
    upstream = json.loads(response.body)
    names = [name for name, _ in upstream["header_list"]]
    assert "host" in names  # not removed: Envoy refuses to remove host (and the pseudo-headers)
    assert upstream["path"] == "/anything"
    assert "x-drop-me" not in names  # the other name of the same answer is removed
    assert "x-keep-me" in names
