"""The XFCC trust model and the HTTP transport's peer certificate, through two real Envoys.

Topology: :mod:`tests.support.envoy_xfcc` (edge Envoy: SANITIZE_SET listeners; inner Envoy:
APPEND_FORWARD listeners behind the edge's mTLS hop). extauthz serves both transports.

The attack (issue 11.1): Envoy 1.40 writes URI/DNS SANs unquoted, so a client certificate from the
trusted CA whose SAN holds ``,Hash=<victim>;Cert="<victim's PEM>";URI=<victim>`` makes a generic
XFCC parser see the victim's element. The certificates below carry every XFCC delimiter
(``, ; = " \\``) and every key (``By Hash Cert Chain Subject URI DNS``) in their URI SANs, DNS
SANs and subject; each is presented through each listener. None may ever come out as the victim
(or anyone but itself); delimiter-bearing names are refused (401 ``cert_invalid``), and the XFCC
element count must fit the configured model (401 ``xfcc_mismatch``).

extauthz routes (selected by path, the same on both transports):

* ``/one/``  mtls, ``xfcc: true`` (one SANITIZE_SET Envoy): gRPC without the peer certificate
  (``edge_grpc``), HTTP with XFCC only (``edge_http_xfcc``), HTTP with XFCC and the peer
  certificate header (``edge_http``: both must name the same certificate);
* ``/peer/`` mtls without XFCC: only the peer certificate (gRPC ``include_peer_certificate``,
  HTTP ``--http-authz-peer-cert-header``);
* ``/g/two/`` ``/h/two/`` mtls, ``xfcc.proxies: [SANITIZE_SET, APPEND_FORWARD]`` (edge + inner);
* ``/g/one/`` ``/h/one/`` the one-hop model behind two hops: refused (``xfcc_mismatch``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.authn.xfcc import parse_xfcc
from extauthz.authn.xfcc_trust import XfccModel
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.http_authz import PEER_CERT_HEADER
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.certs import SERVER_AUTH, Issued, TestCA, url_encode
from tests.support.envoy_tls import ClientCert
from tests.support.envoy_xfcc import Topology, start_topology
from tests.support.processes import write_config

HTTP_AUTHZ_DEPLOY = Path(__file__).resolve().parents[2] / "deploy/envoy/envoy-http-authz.yaml"
VICTIM_ID = "spiffe://example.org/ns/billing/sa/victim"
ORDERS_ID = "spiffe://example.org/ns/orders/sa/api"
SERVER_ID = "spiffe://example.org/ns/edge/sa/envoy"  # both Envoys' server certificate (By=)
PROXY_ID = "spiffe://example.org/ns/edge/sa/proxy"  # the edge Envoy's client certificate
CN_ID = "spiffe://example.org/ns/cn/sa/inject"
XFCC = "x-forwarded-client-cert"
EVERY_KEY = ";By=a;Hash=b;Cert=c;Chain=d;Subject=e;URI=f;DNS=g"


def _nasty_sans(victim: Issued) -> dict[str, dict[str, Any]]:
    """Certificates whose names carry XFCC syntax (issue() keyword arguments, by name)."""
    pem = url_encode(victim.pem)
    element = f"Hash={victim.sha256_hex};Cert=\"{pem}\";Subject=\"CN=victim\";URI={VICTIM_ID}"
    return {
        # a whole quoted victim element after a comma, in the URI SAN
        "uri_quoted_element": {"uris": [f"spiffe://example.org/ns/x/sa/a,{element}"]},
        # the same, unquoted Cert, with a By first (as a second hop would write it)
        "uri_unquoted_element": {"uris": [
            f"spiffe://example.org/ns/x/sa/a,By={SERVER_ID};Hash={victim.sha256_hex};"
            f"Cert={pem};URI={VICTIM_ID}"]},
        # the victim element in a DNS SAN
        "dns_element": {"dns": [f"a.example,Hash={victim.sha256_hex};Cert={pem};DNS=v.example"]},
        # quote and backslash (a generic parser loses track of quoting)
        "uri_quote_backslash": {"uris": ['spiffe://example.org/a"b\\c;d=e']},
        # every key, in a URI and in a DNS SAN
        "uri_every_key": {"uris": ["https://x.example/" + EVERY_KEY + ",Hash=0"]},
        "dns_every_key": {"dns": ["x.example" + EVERY_KEY]},
        # a second URI SAN that starts a new element
        "second_uri": {"uris": ["https://a.example/", f"https://b,URI={VICTIM_ID}"]},
    }


@dataclass(frozen=True)
class Pki:
    dir: Path
    issued: dict[str, Issued]
    clients: dict[str, ClientCert]

    def __getitem__(self, name: str) -> ClientCert:
        return self.clients[name]


def _make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create("xfcc e2e root")
    ca.write_bundle(directory / "ca.crt")
    server = ca.issue("envoy", dns=["localhost"], uris=[SERVER_ID], eku=(SERVER_AUTH,))
    server.write(directory / "server.crt", directory / "server.key")
    victim = ca.issue("victim", uris=[VICTIM_ID])
    issued: dict[str, Issued] = {
        "victim": victim,
        "orders": ca.issue("orders", uris=[ORDERS_ID]),
        "edgeproxy": ca.issue("edge proxy", uris=[PROXY_ID]),
        # the subject carries the syntax, the SAN is clean: names the client by its SPIFFE ID
        "cn_inject": ca.issue('x",Cert=a;URI=b,DNS=c\\d=', uris=[CN_ID]),
    }
    for name, kwargs in _nasty_sans(victim).items():
        issued[name] = ca.issue(name, **kwargs)
    clients = {}
    for name, cert in issued.items():
        clients[name] = ClientCert(name, directory / f"{name}.crt", directory / f"{name}.key")
        cert.write(clients[name].cert, clients[name].key)
    return Pki(directory, issued, clients)


NASTY = tuple(_nasty_sans(TestCA.create().issue()).keys())


@pytest.fixture(scope="module")
def pki(e2e_dir: Path) -> Pki:
    return _make_pki(e2e_dir / "pki")


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, pki: Pki) -> Path:
    bundle = str(pki.dir / "ca.crt")
    two_hops = {"proxies": ["SANITIZE_SET", "APPEND_FORWARD"], "proxy_identities": [PROXY_ID]}
    data: dict[str, Any] = {
        "version": 1,
        "settings": {"realm": "extauthz"},
        "authenticators": {
            "one-hop": {"mtls": {"trust_bundles": [bundle], "xfcc": True}},
            "two-hops": {"mtls": {"trust_bundles": [bundle], "xfcc": two_hops}},
            "peer-only": {"mtls": {"trust_bundles": [bundle]}},
        },
        "routes": [
            {"name": "one", "match": {"prefix": "/one/"}, "authn": ["one-hop"]},
            {"name": "peer", "match": {"prefix": "/peer/"}, "authn": ["peer-only"]},
            {"name": "g-two", "match": {"prefix": "/g/two/"}, "authn": ["two-hops"]},
            {"name": "h-two", "match": {"prefix": "/h/two/"}, "authn": ["two-hops"]},
            {"name": "g-one", "match": {"prefix": "/g/one/"}, "authn": ["one-hop"]},
            {"name": "h-one", "match": {"prefix": "/h/one/"}, "authn": ["one-hop"]},
        ],
    }
    return write_config(e2e_dir / "extauthz-xfcc.yaml", data)


@pytest.fixture(scope="module")
def topo(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path, pki: Pki) -> Iterator[Topology]:
    running = start_topology(extauthz_config, echo_port=echo.port, logs=e2e_dir / "logs",
                             cert_dir=pki.dir)
    try:
        yield running
    finally:
        running.stop()


def _xfcc_envoy_wrote(response: Response) -> str:
    header = upstream_headers(response).get(XFCC)
    assert header, response.text[:300]
    return header


def _subject_or_reason(response: Response) -> str:
    if response.status == 200:
        return "subject:" + json.loads(response.body)["headers"].get("x-auth-subject", "")
    return f"{response.status}:{response.problem().get('reason')}"


# -- what Envoy writes, and how the model reads it ---------------------------------------------


@pytest.mark.parametrize("name", [*NASTY, "cn_inject", "orders"])
def test_the_model_reads_the_presenters_own_element_from_what_envoy_wrote(
        topo: Topology, pki: Pki, name: str) -> None:
    header = _xfcc_envoy_wrote(topo.tls("edge_echo", "/x", pki[name]))
    (element,) = XfccModel().read(header)
    assert element.cert == pki.issued[name].cert
    assert element.hash == pki.issued[name].sha256_hex
    assert element.by == (SERVER_ID,)


def test_envoy_writes_san_values_unquoted_so_a_generic_parser_is_fooled(
        topo: Topology, pki: Pki) -> None:
    # The wire fact behind issue 11.1, kept as a test: the generic grammar sees two elements,
    # the second built from the victim's certificate.
    header = _xfcc_envoy_wrote(topo.tls("edge_echo", "/x", pki["uri_quoted_element"]))
    elements = parse_xfcc(header)
    assert len(elements) == 2
    assert elements[1].uri == (VICTIM_ID,)
    assert XfccModel().client(header).uris != (VICTIM_ID,)


@pytest.mark.parametrize("name", [*NASTY, "cn_inject", "orders"])
def test_two_hops_the_model_reads_the_client_then_the_edge_proxy(
        topo: Topology, pki: Pki, name: str) -> None:
    header = _xfcc_envoy_wrote(topo.tls("edge_hop", "/e/x", pki[name]))
    client, proxy = XfccModel(("SANITIZE_SET", "APPEND_FORWARD"),
                              frozenset({PROXY_ID})).read(header)
    assert client.cert == pki.issued[name].cert
    assert proxy.cert == pki.issued["edgeproxy"].cert


# -- one SANITIZE_SET Envoy, XFCC only: gRPC (no peer certificate) and HTTP ---------------------


@pytest.mark.parametrize("listener", ["edge_grpc", "edge_http_xfcc", "edge_http"])
@pytest.mark.parametrize("name", NASTY)
def test_delimiters_in_names_never_take_another_identity(
        topo: Topology, pki: Pki, listener: str, name: str) -> None:
    r = topo.tls(listener, "/one/x", pki[name])
    assert_denied(r, 401, "cert_invalid")
    assert "x-forwarded-client-cert delimiters" in r.text


@pytest.mark.parametrize("listener", ["edge_grpc", "edge_http_xfcc", "edge_http"])
@pytest.mark.parametrize(("name", "subject"), [("orders", ORDERS_ID), ("victim", VICTIM_ID),
                                               ("cn_inject", CN_ID)])
def test_clients_are_named_by_their_own_certificate(
        topo: Topology, pki: Pki, listener: str, name: str, subject: str) -> None:
    seen = upstream_headers(topo.tls(listener, "/one/x", pki[name]))
    assert seen["x-auth-subject"] == subject
    assert seen["x-auth-cert-sha256"] == pki.issued[name].sha256_hex


@pytest.mark.parametrize("listener", ["edge_grpc", "edge_http_xfcc", "edge_http"])
def test_a_client_sent_xfcc_is_replaced_by_sanitize_set(
        topo: Topology, pki: Pki, listener: str) -> None:
    forged = (f"Hash={pki.issued['victim'].sha256_hex};"
              f"Cert=\"{url_encode(pki.issued['victim'].pem)}\";URI={VICTIM_ID}")
    seen = upstream_headers(topo.tls(listener, "/one/x", pki["orders"], {XFCC: forged}))
    assert seen["x-auth-subject"] == ORDERS_ID
    # without a client certificate Envoy drops it and writes nothing: no credential
    r = topo.tls(listener, "/one/x", None, {XFCC: forged})
    assert_denied(r, 401, "missing_credential")


# -- the HTTP transport's own peer certificate (%DOWNSTREAM_PEER_CERT%) --------------------------


def test_http_transport_reads_the_peer_certificate_envoy_sets(topo: Topology, pki: Pki) -> None:
    seen = upstream_headers(topo.tls("edge_http", "/peer/x", pki["orders"]))
    assert seen["x-auth-subject"] == ORDERS_ID
    assert seen["x-auth-method"] == "mtls"


@pytest.mark.parametrize("where", ["tls_without_certificate", "plain_http"])
def test_a_client_sent_peer_certificate_header_never_reaches_extauthz(
        topo: Topology, pki: Pki, where: str) -> None:
    # Envoy 1.40 sets nothing without a client certificate; disallowed_headers drops the
    # client's own value, so the victim's (public) certificate is not a credential.
    forged = {PEER_CERT_HEADER: url_encode(pki.issued["victim"].pem)}
    if where == "plain_http":
        r = topo.plain("plain_http", "/peer/x", forged)
    else:
        r = topo.tls("edge_http", "/peer/x", None, forged)
    assert_denied(r, 401, "missing_credential")


def test_without_disallowed_headers_envoy_passes_a_client_sent_peer_certificate(
        topo: Topology, pki: Pki) -> None:
    # The wire fact behind disallowed_headers (negative control, deliberately wrong listener):
    # on a connection without a client certificate %DOWNSTREAM_PEER_CERT% is empty, Envoy 1.40
    # then adds nothing, and the client's own header reaches extauthz as the "peer certificate".
    forged = {PEER_CERT_HEADER: url_encode(pki.issued["victim"].pem)}
    seen = upstream_headers(topo.plain("plain_unguarded", "/peer/x", forged))
    assert seen["x-auth-subject"] == VICTIM_ID


def test_the_deploy_file_ships_both_envoy_settings() -> None:
    config = yaml.safe_load(HTTP_AUTHZ_DEPLOY.read_text())
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    (authz,) = [f for f in hcm["typed_config"]["http_filters"]
                if f["name"] == "envoy.filters.http.ext_authz"]
    typed = authz["typed_config"]
    added = typed["http_service"]["authorization_request"]["headers_to_add"]
    assert {"key": PEER_CERT_HEADER, "value": "%DOWNSTREAM_PEER_CERT%"} in added
    assert {"exact": PEER_CERT_HEADER} in typed["disallowed_headers"]["patterns"]


def test_a_client_sent_peer_certificate_header_is_replaced_on_tls(topo: Topology, pki: Pki) -> None:
    forged = {PEER_CERT_HEADER: url_encode(pki.issued["victim"].pem)}
    seen = upstream_headers(topo.tls("edge_http", "/peer/x", pki["orders"], forged))
    assert seen["x-auth-subject"] == ORDERS_ID


# -- two hops: edge SANITIZE_SET -> inner APPEND_FORWARD -> extauthz ------------------------------


@pytest.mark.parametrize("transport", ["g", "h"])
@pytest.mark.parametrize(("name", "subject"), [("orders", ORDERS_ID), ("victim", VICTIM_ID)])
def test_two_hops_identify_the_client_not_the_edge_proxy(
        topo: Topology, pki: Pki, transport: str, name: str, subject: str) -> None:
    seen = upstream_headers(topo.tls("edge_hop", f"/{transport}/two/x", pki[name]))
    assert seen["x-auth-subject"] == subject
    assert seen["x-auth-subject"] != PROXY_ID


@pytest.mark.parametrize("transport", ["g", "h"])
@pytest.mark.parametrize("name", NASTY)
def test_two_hops_delimiters_in_names_are_refused(
        topo: Topology, pki: Pki, transport: str, name: str) -> None:
    assert_denied(topo.tls("edge_hop", f"/{transport}/two/x", pki[name]), 401, "cert_invalid")


@pytest.mark.parametrize("transport", ["g", "h"])
def test_a_model_that_does_not_fit_the_topology_is_refused(
        topo: Topology, pki: Pki, transport: str) -> None:
    # The one-hop model behind two hops: two elements where one is expected (and the peer
    # certificate is the edge proxy's, which does not match the first element).
    r = topo.tls("edge_hop", f"/{transport}/one/x", pki["orders"])
    assert_denied(r, 401, "xfcc_mismatch")


@pytest.mark.parametrize("listener", ["inner_grpc", "inner_http"])
def test_a_client_that_reaches_the_inner_proxy_directly_cannot_write_the_client_element(
        topo: Topology, pki: Pki, listener: str) -> None:
    # The inner Envoy accepts any certificate of the CA and appends it after the header the
    # client sent: a forged victim element (exactly as Envoy writes one) comes first. The proxy
    # identity check catches it: the appended element (and the peer) is not the edge proxy.
    victim = pki.issued["victim"]
    forged = f'Hash={victim.sha256_hex};Cert="{url_encode(victim.pem)}";URI={VICTIM_ID}'
    two = "g" if listener == "inner_grpc" else "h"
    r = topo.tls(listener, f"/{two}/two/x", pki["orders"], {XFCC: forged})
    assert_denied(r, 401, "xfcc_mismatch")
