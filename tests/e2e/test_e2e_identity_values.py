"""Issue 11.7 through Envoy with real certificates: a trusted client certificate whose name cannot
be an identity header is denied with ``identity_not_representable``, never allowed without the
header. (JWT claims with the same characters, over both transports: test_e2e_parity.py.)

Envoy runs deploy/envoy/envoy-mtls.yaml (tests.support.envoy_tls); the client presents a
certificate from the test CA whose only name is its subject DN, so the DN becomes
``x-auth-subject``. Two ways to reach extauthz: the peer certificate (``mtls`` listener) and the
``x-forwarded-client-cert`` header Envoy wrote (``xfcc`` listener).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.demo.background import BackgroundApp
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.certs import SERVER_AUTH, TestCA
from tests.support.envoy_tls import ClientCert, TlsStack, ext_authz_route, start_tls_stack
from tests.support.processes import write_config

#: subject CNs (no SANs, so the subject DN is the identity)
NAMES = {
    "plain": "legacy-client",
    "utf8": "zoë-client",
    "crlf": "legacy\r\nx-auth-admin: true",
    "nul": "legacy\x00admin",
    "tab": "legacy\tclient",
    "c1": "legacy\x85client",
}


@pytest.fixture(scope="module")
def clients(e2e_dir: Path) -> dict[str, ClientCert]:
    directory = e2e_dir / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create("identity values root")
    ca.issue("envoy", dns=["localhost"], eku=(SERVER_AUTH,)).write(
        directory / "server.crt", directory / "server.key")
    ca.write_bundle(directory / "client-ca.crt")
    out = {}
    for key, cn in NAMES.items():
        client = ClientCert(key, directory / f"{key}.crt", directory / f"{key}.key")
        ca.issue(cn).write(client.cert, client.key)
        out[key] = client
    return out


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, clients: dict[str, ClientCert]) -> Path:
    bundle = str(e2e_dir / "pki" / "client-ca.crt")
    return write_config(e2e_dir / "extauthz.yaml", {
        "version": 1,
        "authenticators": {
            "certs": {"mtls": {"trust_bundles": [bundle]}},
            "xfcc-certs": {"mtls": {"trust_bundles": [bundle], "xfcc": True}},
        },
        # the deploy file's catch-all Envoy route names `workloads`
        "routes": [{"name": "workloads", "authn": ["certs"]},
                   {"name": "xfcc", "authn": ["xfcc-certs"]}],
    })


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path,
          clients: dict[str, ClientCert]) -> Iterator[TlsStack]:
    running = start_tls_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "logs",
                              cert_dir=e2e_dir / "pki",
                              routes=[ext_authz_route("/xfcc/", "xfcc")])
    try:
        yield running
    finally:
        running.stop()


WAYS = [("mtls", "/api/x"), ("xfcc", "/xfcc/x")]
#: how the CN appears in the RFC 4514 subject: NUL is escaped there (so representable)
SHOWN = {"plain": "CN=legacy-client", "utf8": "CN=zoë-client", "nul": "CN=legacy\\00admin"}


@pytest.mark.parametrize(("listener", "path"), WAYS)
@pytest.mark.parametrize("client", sorted(SHOWN))
def test_representable_certificate_names_are_the_subject(
        stack: TlsStack, clients: dict[str, ClientCert], listener: str, path: str,
        client: str) -> None:
    seen = upstream_headers(stack.tls(path, clients[client], listener=listener))
    # the RFC 4514 subject DN, as UTF-8 on the wire (the echo decodes UTF-8)
    assert SHOWN[client] in seen["x-auth-subject"], seen
    assert seen["x-auth-method"] == "mtls"


@pytest.mark.parametrize(("listener", "path"), WAYS)
@pytest.mark.parametrize("client", ["crlf", "tab", "c1"])
def test_unrepresentable_certificate_names_deny(
        stack: TlsStack, clients: dict[str, ClientCert], listener: str, path: str,
        client: str) -> None:
    response = stack.tls(path, clients[client], listener=listener)
    assert_denied(response, 403, "identity_not_representable")
    assert "x-auth-admin" not in response.text
