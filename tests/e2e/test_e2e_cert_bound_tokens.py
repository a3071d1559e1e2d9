"""RFC 8705 certificate-bound tokens through real Envoys, over both transports and two hops.

Topology: :mod:`tests.support.envoy_xfcc` (the same as test_e2e_xfcc_trust.py). Tokens are minted
by the module's :class:`~extauthz.demo.idp.DemoIdP` (JWT) or answered by a small introspection
endpoint (opaque), with ``cnf: {"x5t#S256": <thumbprint of client A>}``; requests present client
A, client B or no certificate.

extauthz routes:

* ``/bound/``     any_of [jwt (binding via peer certificate or one-hop XFCC), introspection]
* ``/both/``      all_of [mtls, jwt]
* ``/required/``  jwt with ``certificate_binding.require: true``
* ``/g/bound/`` ``/h/bound/`` jwt behind edge + inner Envoy (``xfcc.proxies`` two hops)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from extauthz.authn.mtls import cert_thumbprint_s256
from extauthz.demo.background import BackgroundApp
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.certs import SERVER_AUTH, Issued, TestCA
from tests.support.envoy_tls import ClientCert
from tests.support.envoy_xfcc import Topology, start_topology
from tests.support.processes import write_config

A_ID = "spiffe://example.org/ns/orders/sa/a"
B_ID = "spiffe://example.org/ns/orders/sa/b"
TWO_HOPS = {"proxies": ["SANITIZE_SET", "APPEND_FORWARD"],
            "proxy_identities": ["spiffe://example.org/p"]}
EDGE = ["edge_grpc", "edge_http"]


class Introspection:
    """An RFC 7662 endpoint answering from ``tokens`` (client authentication not checked)."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.app = BackgroundApp(self._make, name="introspection")

    def _make(self) -> web.Application:
        async def introspect(request: web.Request) -> web.Response:
            token = str((await request.post()).get("token", ""))
            with self.lock:
                doc = self.tokens.get(token, {"active": False})
            return web.json_response(doc)

        app = web.Application()
        app.router.add_post("/introspect", introspect)
        return app

    def issue(self, name: str, **extra: Any) -> str:
        token = f"opaque-{name}-token-0123456789"
        with self.lock:
            self.tokens[token] = {"active": True, "sub": "alice", "client_id": "web",
                                  "scope": "orders:read", **extra}
        return token


@pytest.fixture(scope="module")
def introspection() -> Iterator[Introspection]:
    fake = Introspection()
    fake.app.start()
    yield fake
    fake.app.close()


@pytest.fixture(scope="module")
def pki(e2e_dir: Path) -> dict[str, Any]:
    directory = e2e_dir / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create("bound tokens root")
    ca.write_bundle(directory / "ca.crt")
    ca.issue("envoy", dns=["localhost"], eku=(SERVER_AUTH,)).write(
        directory / "server.crt", directory / "server.key")
    issued: dict[str, Issued] = {"a": ca.issue("a", uris=[A_ID]), "b": ca.issue("b", uris=[B_ID]),
                                 "edgeproxy": ca.issue("proxy", uris=["spiffe://example.org/p"])}
    clients = {}
    for name, cert in issued.items():
        clients[name] = ClientCert(name, directory / f"{name}.crt", directory / f"{name}.key")
        cert.write(clients[name].cert, clients[name].key)
    return {"dir": directory, "issued": issued, "clients": clients,
            "a_x5t": cert_thumbprint_s256(issued["a"].pem)}


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP, introspection: Introspection,
                    pki: dict[str, Any]) -> Path:
    secret = e2e_dir / "client.secret"
    secret.write_text("secret\n")
    jwt: dict[str, Any] = {"issuer": idp.issuer, "audiences": [idp.audience],
                           "algorithms": ["RS256"], "jwks": {"discovery": True}}
    data: dict[str, Any] = {
        "version": 1,
        "settings": {"realm": "extauthz"},
        "authenticators": {
            "jwt-1hop": {"jwt": {**jwt, "certificate_binding": {"xfcc": True}}},
            "jwt-2hops": {"jwt": {**jwt, "certificate_binding": {"xfcc": TWO_HOPS}}},
            "jwt-required": {"jwt": {**jwt, "certificate_binding": {"xfcc": True,
                                                                    "require": True}}},
            "opaque-1hop": {"introspection": {
                "endpoint": f"{introspection.app.base_url}/introspect", "client_id": "extauthz",
                "client_secret_file": str(secret), "certificate_binding": {"xfcc": True}}},
            "any-cert": {"mtls": {"trust_bundles": [str(pki["dir"] / "ca.crt")], "xfcc": True}},
        },
        "routes": [
            {"name": "bound", "match": {"prefix": "/bound/"}, "authn": ["jwt-1hop", "opaque-1hop"]},
            {"name": "both", "match": {"prefix": "/both/"}, "authn_mode": "all_of",
             "authn": ["any-cert", "jwt-1hop"]},
            {"name": "required", "match": {"prefix": "/required/"}, "authn": ["jwt-required"]},
            {"name": "g-bound", "match": {"prefix": "/g/bound/"}, "authn": ["jwt-2hops"]},
            {"name": "h-bound", "match": {"prefix": "/h/bound/"}, "authn": ["jwt-2hops"]},
        ],
    }  # fmt: skip
    return write_config(e2e_dir / "extauthz-bound.yaml", data)


@pytest.fixture(scope="module")
def topo(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path,
         pki: dict[str, Any]) -> Iterator[Topology]:
    running = start_topology(extauthz_config, echo_port=echo.port, logs=e2e_dir / "logs",
                             cert_dir=pki["dir"])
    try:
        yield running
    finally:
        running.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(idp: DemoIdP, introspection: Introspection, pki: dict[str, Any]) -> dict[str, str]:
    cnf = {"cnf": {"x5t#S256": pki["a_x5t"]}}
    return {
        "jwt": idp.mint("alice", extra=cnf, expires_in=3600),
        "opaque": introspection.issue("bound", **cnf),
        "jwt_unbound": idp.mint("alice", expires_in=3600),
        "opaque_unbound": introspection.issue("unbound"),
    }


@pytest.mark.parametrize("listener", EDGE)
@pytest.mark.parametrize("kind", ["jwt", "opaque"])
def test_bound_token_with_its_certificate_is_allowed(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], listener: str,
        kind: str) -> None:
    seen = upstream_headers(topo.tls(listener, "/bound/x", pki["clients"]["a"],
                                     _bearer(tokens[kind])))
    assert seen["x-auth-subject"] == "alice"


@pytest.mark.parametrize("listener", EDGE)
@pytest.mark.parametrize("kind", ["jwt", "opaque"])
@pytest.mark.parametrize("client", ["b", None])
def test_bound_token_with_another_or_no_certificate_is_refused(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], listener: str, kind: str,
        client: str | None) -> None:
    presented = pki["clients"][client] if client else None
    r = topo.tls(listener, "/bound/x", presented, _bearer(tokens[kind]))
    assert_denied(r, 401, "cert_binding_mismatch", challenge_contains=('error="invalid_token"',))


@pytest.mark.parametrize("listener", EDGE)
@pytest.mark.parametrize("kind", ["jwt_unbound", "opaque_unbound"])
def test_unbound_tokens_stay_bearer_tokens_unless_binding_is_required(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], listener: str,
        kind: str) -> None:
    assert upstream_headers(topo.tls(listener, "/bound/x", None, _bearer(tokens[kind])))
    if kind == "jwt_unbound":
        r = topo.tls(listener, "/required/x", pki["clients"]["a"], _bearer(tokens[kind]))
        assert_denied(r, 401, "unbound_token")


@pytest.mark.parametrize("listener", EDGE)
def test_required_binding_accepts_a_bound_token(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], listener: str) -> None:
    assert upstream_headers(topo.tls(listener, "/required/x", pki["clients"]["a"],
                                     _bearer(tokens["jwt"])))


@pytest.mark.parametrize("listener", EDGE)
@pytest.mark.parametrize("cnf", ["x", {}, {"x5t#S256": 12}, {"x5t#S256": "short"},
                                 {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}])
def test_malformed_or_uncheckable_cnf_is_refused(
        topo: Topology, pki: dict[str, Any], idp: DemoIdP, listener: str, cnf: Any) -> None:
    token = idp.mint("alice", extra={"cnf": cnf})
    r = topo.tls(listener, "/bound/x", pki["clients"]["a"], _bearer(token))
    assert_denied(r, 401, "invalid_token")


@pytest.mark.parametrize("listener", EDGE)
def test_all_of_route_enforces_the_binding_too(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], listener: str) -> None:
    seen = upstream_headers(topo.tls(listener, "/both/x", pki["clients"]["a"],
                                     _bearer(tokens["jwt"])))
    assert seen["x-auth-spiffe-id"] == A_ID
    r = topo.tls(listener, "/both/x", pki["clients"]["b"], _bearer(tokens["jwt"]))
    assert_denied(r, 401, "cert_binding_mismatch")


@pytest.mark.parametrize("transport", ["g", "h"])
def test_two_hops_bind_to_the_client_certificate_not_the_edge_proxy(
        topo: Topology, pki: dict[str, Any], tokens: dict[str, str], transport: str) -> None:
    path = f"/{transport}/bound/x"
    seen = upstream_headers(topo.tls("edge_hop", path, pki["clients"]["a"],
                                     _bearer(tokens["jwt"])))
    assert seen["x-auth-subject"] == "alice"
    r = topo.tls("edge_hop", path, pki["clients"]["b"], _bearer(tokens["jwt"]))
    assert_denied(r, 401, "cert_binding_mismatch")
