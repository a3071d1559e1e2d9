"""Mesh identity: ``attributes.source.principal`` (Istio's verified peer SPIFFE ID) in rules and
CEL, over a real gRPC channel; the HTTP transport never has it (a client header cannot forge it).

The principal is a rule about the calling workload next to the request's own credential (here an
API key): a route's ``authz`` needs an authenticated identity.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.keys import hash_api_key
from extauthz.server import Server, ServerOptions

KEY = "eak_mesh-principal-test-key-0000001"

ORDERS = "spiffe://cluster.local/ns/shop/sa/orders"
CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}"}}]
routes:
- name: payments
  match: {{prefix: /payments/}}
  authn: [keys]
  authz:
    rules:
    - principal: {{allow: ["spiffe://cluster.local/ns/shop/*"],
                  deny: ["spiffe://cluster.local/ns/shop/sa/legacy"]}}
- name: refunds
  match: {{prefix: /refunds/}}
  authn: [keys]
  authz:
    rules:
    - cel: source.principal == "spiffe://cluster.local/ns/shop/sa/orders"
"""


def check_request(path: str, principal: str,
                  headers: dict[str, str] | None = None) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", path, "svc.local"
    http.headers.update({":method": "GET", ":path": path, ":authority": "svc.local",
                         "x-api-key": KEY, **(headers or {})})
    req.attributes.source.principal = principal
    req.attributes.source.address.socket_address.address = "10.0.0.7"
    return req


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2,
                               http_authz_address="127.0.0.1:0", decision_log=False))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


OK = grpc.StatusCode.OK.value[0]
DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


@pytest.mark.parametrize(("path", "principal", "allowed"), [
    ("/payments/x", ORDERS, True),
    ("/payments/x", "spiffe://cluster.local/ns/shop/sa/legacy", False),  # denied
    ("/payments/x", "spiffe://cluster.local/ns/other/sa/orders", False),  # not allowed
    ("/payments/x", "spiffe://cluster.local/ns/shopping/sa/x", False),  # prefix ends at '/'
    ("/payments/x", "", False),  # no mesh identity: fail closed
    ("/refunds/x", ORDERS, True),
    ("/refunds/x", ORDERS + "x", False),
    ("/refunds/x", "", False),
])
async def test_grpc_source_principal(stub: external_auth_pb2_grpc.AuthorizationStub, path: str,
                                     principal: str, allowed: bool) -> None:
    resp = await stub.Check(check_request(path, principal))
    if allowed:
        assert resp.status.code == OK
    else:
        assert resp.status.code == DENIED
        assert resp.denied_response.status.code == 403
        assert json.loads(resp.denied_response.body)["reason"] == "forbidden"


async def test_a_client_header_is_not_a_principal(
        stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    resp = await stub.Check(check_request("/payments/x", "", {"x-forwarded-client-cert":
                                                               f"URI={ORDERS}",
                                                               "source.principal": ORDERS}))
    assert resp.status.code == DENIED and resp.denied_response.status.code == 403


async def test_http_transport_has_no_principal(server: Server) -> None:
    """Envoy's HTTP ext_authz has no source attributes: the rule denies (403), whatever the
    client sends."""
    url = f"http://127.0.0.1:{server.http_authz_port}/check/payments/x"
    forged = {"x-api-key": KEY, "x-forwarded-client-cert": f"URI={ORDERS}",
              "source-principal": ORDERS}
    async with aiohttp.ClientSession() as session, session.get(url, headers=forged) as resp:
        assert resp.status == 403
        assert (await resp.json())["reason"] == "forbidden"
