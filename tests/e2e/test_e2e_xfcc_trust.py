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
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from extauthz.authn.xfcc import parse_xfcc
from extauthz.authn.xfcc_trust import XfccModel
from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response
from extauthz.http_authz import PEER_CERT_HEADER
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.certs import CLIENT_AUTH, DAY, SERVER_AUTH, Issued, TestCA, _utc, url_encode
from tests.support.envoy_tls import ClientCert, tls_request
from tests.support.envoy_xfcc import Topology, start_topology
from tests.support.processes import GRPC_SERVER_ARGS, write_config
from tests.support.transports import GRPC_TRANSPORTS

#: every test here runs over both gRPC servers: grpc.aio and the Envoy front (conftest.py)
STACK_TRANSPORTS = GRPC_TRANSPORTS

HTTP_AUTHZ_DEPLOY = Path(__file__).resolve().parents[2] / "deploy/envoy/envoy-http-authz.yaml"
VICTIM_ID = "spiffe://example.org/ns/billing/sa/victim"
ORDERS_ID = "spiffe://example.org/ns/orders/sa/api"
SERVER_ID = "spiffe://example.org/ns/edge/sa/envoy"  # both Envoys' server certificate (By=)
PROXY_ID = "spiffe://example.org/ns/edge/sa/proxy"  # the edge Envoy's client certificate
CN_ID = "spiffe://example.org/ns/cn/sa/inject"
FED_A_ID = "spiffe://example.org/ns/fed/sa/a"
FED_B_ID = "spiffe://b.example/ns/fed/sa/b"
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


def _rsa_leaf(ca: TestCA, bits: int, uri: str) -> Issued:
    """A client certificate with an RSA key of ``bits`` (TestCA.issue makes P-256 keys)."""
    key = rsa.generate_private_key(65537, bits)
    now = time.time()
    cert = (
        x509.CertificateBuilder().subject_name(
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"rsa{bits}")]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - DAY)).not_valid_after(_utc(now + DAY))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.issued.key.public_key()), critical=False)
        .sign(ca.issued.key, hashes.SHA256()))
    return Issued(cert, key)  # type: ignore[arg-type]


def _make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create("xfcc e2e root")
    other_domain = TestCA.create("b.example root")
    ca.write_bundle(directory / "root.crt")
    other_domain.write_bundle(directory / "b.crt")
    # Envoy (and the one-hop routes) trust both roots, as a federated deployment's Envoy does
    (directory / "ca.crt").write_text(ca.pem + other_domain.pem)
    server = ca.issue("envoy", dns=["localhost"], uris=[SERVER_ID], eku=(SERVER_AUTH,))
    server.write(directory / "server.crt", directory / "server.key")
    victim = ca.issue("victim", uris=[VICTIM_ID])
    issued: dict[str, Issued] = {
        "victim": victim,
        "orders": ca.issue("orders", uris=[ORDERS_ID]),
        "edgeproxy": ca.issue("edge proxy", uris=[PROXY_ID]),
        # the subject carries the syntax, the SAN is clean: names the client by its SPIFFE ID
        "cn_inject": ca.issue('x",Cert=a;URI=b,DNS=c\\d=', uris=[CN_ID]),
        # SPIFFE federation: an example.org SVID issued by b.example's CA, and a b.example one
        "a_by_b": other_domain.issue("a by b", uris=[FED_A_ID]),
        "b_by_b": other_domain.issue("b by b", uris=[FED_B_ID]),
        "rsa1024": _rsa_leaf(ca, 1024, "spiffe://example.org/ns/weak/sa/rsa1024"),
        "rsa2048": _rsa_leaf(ca, 2048, "spiffe://example.org/ns/ok/sa/rsa2048"),
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
            "federated": {"mtls": {"xfcc": True, "spiffe_bundles": [
                {"trust_domain": "example.org", "bundle": str(pki.dir / "root.crt")},
                {"trust_domain": "b.example", "bundle": str(pki.dir / "b.crt")}]}},
        },
        "routes": [
            {"name": "one", "match": {"prefix": "/one/"}, "authn": ["one-hop"]},
            {"name": "peer", "match": {"prefix": "/peer/"}, "authn": ["peer-only"]},
            {"name": "fed", "match": {"prefix": "/fed/"}, "authn": ["federated"]},
            {"name": "g-two", "match": {"prefix": "/g/two/"}, "authn": ["two-hops"]},
            {"name": "h-two", "match": {"prefix": "/h/two/"}, "authn": ["two-hops"]},
            {"name": "g-one", "match": {"prefix": "/g/one/"}, "authn": ["one-hop"]},
            {"name": "h-one", "match": {"prefix": "/h/one/"}, "authn": ["one-hop"]},
        ],
    }
    return write_config(e2e_dir / "extauthz-xfcc.yaml", data)


@pytest.fixture(scope="module")
def topo(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path, pki: Pki,
         stack_transport: str) -> Iterator[Topology]:
    running = start_topology(extauthz_config, echo_port=echo.port,
                             logs=e2e_dir / f"logs-{stack_transport}", cert_dir=pki.dir,
                             extra_args=GRPC_SERVER_ARGS[stack_transport])
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


# -- which certificates: SPIFFE federation and the leaf key policy, through Envoy ----------------


@pytest.mark.parametrize("listener", ["edge_grpc", "edge_http"])
def test_federation_an_svid_must_chain_to_its_own_domains_bundle(
        topo: Topology, pki: Pki, listener: str) -> None:
    # Envoy trusts both roots and lets both through; with one trust_bundles list (/one/) the
    # example.org SVID issued by b.example's CA would pass, with spiffe_bundles (/fed/) it does not.
    assert upstream_headers(topo.tls(listener, "/one/x", pki["a_by_b"]))["x-auth-subject"] == (
        FED_A_ID)
    assert_denied(topo.tls(listener, "/fed/x", pki["a_by_b"]), 401, "untrusted_cert")
    seen = upstream_headers(topo.tls(listener, "/fed/x", pki["b_by_b"]))
    assert seen["x-auth-subject"] == FED_B_ID
    seen = upstream_headers(topo.tls(listener, "/fed/x", pki["orders"]))
    assert seen["x-auth-subject"] == ORDERS_ID


@pytest.mark.parametrize("listener", ["edge_grpc", "edge_http"])
def test_a_weak_leaf_key_that_envoy_accepts_is_refused(
        topo: Topology, pki: Pki, listener: str) -> None:
    # (Python's OpenSSL refuses to *send* a 1024-bit key at its default security level)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(topo.ca_file))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(str(pki["rsa1024"].cert), str(pki["rsa1024"].key))
    r = tls_request(topo.ports[listener], "GET", "/one/x", context=context, timeout=10.0)
    assert_denied(r, 401, "cert_invalid")
    assert "RSA key shorter than 2048" in r.text
    assert upstream_headers(topo.tls(listener, "/one/x", pki["rsa2048"]))["x-auth-subject"] == (
        "spiffe://example.org/ns/ok/sa/rsa2048")
