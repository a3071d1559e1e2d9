"""Client certificates (mTLS) through the real Envoy: client -> Envoy TLS -> extauthz -> echo.

Envoy runs ``deploy/envoy/envoy-mtls.yaml`` (see :mod:`tests.support.envoy_tls`) with the test
routes below in front of its own, on five listeners:

``mtls``         the deploy file's listener: client certificate required and verified by Envoy
                 against the test CA; XFCC ``SANITIZE_SET``; ext_authz with the peer certificate.
``permissive``   Envoy requests a certificate but accepts none or any (``ACCEPT_UNTRUSTED``): what
                 reaches extauthz is whatever the client presented, so the 401s there are
                 extauthz's own verification (defence in depth), not Envoy's.
``xfcc``         like ``permissive``, but ext_authz gets no peer certificate: extauthz reads the
                 certificate from the ``x-forwarded-client-cert`` header Envoy wrote.
``plain``        plain HTTP, ``SANITIZE``: a client-sent XFCC header is removed.
``forward_only`` plain HTTP, ``FORWARD_ONLY``: still removes a client-sent XFCC (no client cert).
``unsanitized``  plain HTTP, ``ALWAYS_FORWARD_ONLY`` (deliberately wrong): a client-sent XFCC
                 header is forwarded. The negative control for the XFCC-forgery test.

Envoy routes -> extauthz routes:

* ``/any/`` -> ``any_cert``: mtls, any certificate the test CA issued (no principal rules);
* ``/any-intermediate/`` -> ``any_cert_intermediate``: the same, with the intermediate CA in the
  trust bundle too;
* ``/xfcc/`` -> ``xfcc``: mtls with ``xfcc: true``, trust domain example.org;
* ``/both/`` -> ``both``: ``all_of`` mtls (any) **and** an API key, scope batch:run;
* ``/both-consumer/`` -> ``both_consumer``: the same with ``authz.consumers: [orders-batch]``;
* ``/static/`` (the deploy file's): ext_authz disabled, Envoy strips x-auth-*;
* ``/`` (the deploy file's catch-all) -> ``workloads``: mtls with principal rules (trust domain
  example.org + ``/ns/orders/*``, or exactly spiffe://example.org/ns/billing/sa/invoicer).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.authn.xfcc import parse_xfcc
from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import find_envoy
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.certs import DAY, SERVER_AUTH, Issued, TestCA, xfcc_for
from tests.support.envoy_tls import (
    CERT_PATHS,
    MTLS_ENVOY_CONFIG,
    ClientCert,
    TlsStack,
    ext_authz_route,
    start_tls_stack,
)
from tests.support.processes import write_config
from tests.support.transports import GRPC_TRANSPORTS

#: every test here runs over both gRPC servers: grpc.aio and the Envoy front (conftest.py); the
#: peer certificate reaches extauthz in attributes.source.certificate through the front too
STACK_TRANSPORTS = GRPC_TRANSPORTS

ORDERS_ID = "spiffe://example.org/ns/orders/sa/api"
INVOICER_ID = "spiffe://example.org/ns/billing/sa/invoicer"
FRONTEND_ID = "spiffe://example.org/ns/web/sa/frontend"
FOREIGN_ID = "spiffe://other.example/ns/orders/sa/api"
ENVOY_ID = "spiffe://example.org/ns/edge/sa/envoy"  # Envoy's own (server) certificate
BATCH_KEY = "eak_mtls_e2e_batch_key_0001"

CLIENT_CERT = 'ClientCert realm="extauthz"'
INVALID_CERT = 'error="invalid_certificate"'
APIKEY_CHALLENGE = 'ApiKey realm="extauthz", header="x-api-key"'
XFCC = "x-forwarded-client-cert"

WORKLOADS = "/api/orders"  # the deploy file's catch-all route -> extauthz route `workloads`
ANY = "/any/thing"
ANY_INTERMEDIATE = "/any-intermediate/thing"
XFCC_PATH = "/xfcc/thing"
BOTH = "/both/thing"
BOTH_CONSUMER = "/both-consumer/thing"

ENVOY_ROUTES = [
    ext_authz_route("/any/", "any_cert"),
    ext_authz_route("/any-intermediate/", "any_cert_intermediate"),
    ext_authz_route("/xfcc/", "xfcc"),
    ext_authz_route("/both/", "both"),
    ext_authz_route("/both-consumer/", "both_consumer"),
]


# -- the PKI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """The test CA, Envoy's server certificate and one file pair per client certificate."""

    ca: TestCA
    dir: Path
    issued: dict[str, Issued]
    clients: dict[str, ClientCert]

    def __getitem__(self, name: str) -> ClientCert:
        return self.clients[name]

    @property
    def bundle(self) -> Path:
        return self.dir / "client-ca.crt"


def _make_pki(directory: Path) -> Pki:
    now = time.time()
    ca = TestCA.create("mtls e2e root")
    intermediate = ca.intermediate("mtls e2e intermediate")
    other_ca = TestCA.create("some other root")
    directory.mkdir(parents=True, exist_ok=True)
    server = ca.issue("envoy", dns=["localhost"], uris=[ENVOY_ID], eku=(SERVER_AUTH,))
    server.write(directory / "server.crt", directory / "server.key")
    ca.write_bundle(directory / "client-ca.crt")

    issued: dict[str, Issued] = {
        "orders": ca.issue("orders", uris=[ORDERS_ID]),
        "invoicer": ca.issue("invoicer", uris=[INVOICER_ID]),
        "frontend": ca.issue("frontend", uris=[FRONTEND_ID]),
        "foreign": ca.issue("foreign", uris=[FOREIGN_ID]),
        "dns_only": ca.issue("batch", dns=["batch.internal.example"]),
        "dn_only": ca.issue("legacy-client"),
        "expired": ca.issue(
            "orders", uris=[ORDERS_ID], not_before=now - 10 * DAY, not_after=now - DAY
        ),
        "not_yet_valid": ca.issue(
            "orders", uris=[ORDERS_ID], not_before=now + DAY, not_after=now + 10 * DAY
        ),
        "other_ca": other_ca.issue("orders", uris=[ORDERS_ID]),
        "no_eku": ca.issue("orders", uris=[ORDERS_ID], eku=None),
        "server_eku": ca.issue("orders", uris=[ORDERS_ID], eku=(SERVER_AUTH,)),
        "two_uris": ca.issue("orders", uris=[ORDERS_ID, "https://orders.example/"]),
        "ca_leaf": ca.issue("orders", uris=[ORDERS_ID], ca=True),
        "via_intermediate": intermediate.issue("orders", uris=[ORDERS_ID]),
    }
    clients: dict[str, ClientCert] = {}
    for name, cert in issued.items():
        client = ClientCert(name, directory / f"{name}.crt", directory / f"{name}.key")
        cert.write(client.cert, client.key)
        clients[name] = client
    # The intermediate-issued client sends its chain (leaf, then intermediate), as SPIRE agents
    # and most client libraries do; the trust bundle holds only the root.
    chained = clients["via_intermediate"]
    chained.cert.write_text(issued["via_intermediate"].pem + intermediate.chain_pem())
    (directory / "intermediate.crt").write_text(intermediate.pem)
    return Pki(ca=ca, dir=directory, issued=issued, clients=clients)


@pytest.fixture(scope="module")
def pki(e2e_dir: Path) -> Pki:
    return _make_pki(e2e_dir / "pki")


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, pki: Pki) -> Path:
    bundle = str(pki.bundle)
    data: dict[str, Any] = {
        "version": 1,
        "settings": {"realm": "extauthz"},
        "authenticators": {
            "orders-workloads": {"mtls": {
                "trust_bundles": [bundle],
                "trust_domains": ["example.org"],
                "spiffe_path_globs": ["/ns/orders/*"],
                "allowed_spiffe_ids": [INVOICER_ID],
            }},
            "any-client": {"mtls": {"trust_bundles": [bundle]}},
            "any-client-intermediate": {"mtls": {
                "trust_bundles": [bundle, str(pki.dir / "intermediate.crt")],
            }},
            "xfcc-clients": {"mtls": {
                "trust_bundles": [bundle], "xfcc": True, "trust_domains": ["example.org"],
            }},
            "batch-keys": {"api_key": {"sources": [{"header": "x-api-key"}]}},
        },
        "consumers": [{
            "name": "orders-batch",
            "keys": [{
                "id": "k1",
                "hash": "sha256:" + hashlib.sha256(BATCH_KEY.encode()).hexdigest(),
                "scopes": ["batch:run"],
            }],
        }],
        "routes": [
            {"name": "workloads", "authn": ["orders-workloads"]},
            {"name": "any_cert", "authn": ["any-client"]},
            {"name": "any_cert_intermediate", "authn": ["any-client-intermediate"]},
            {"name": "xfcc", "authn": ["xfcc-clients"]},
            {"name": "both", "authn_mode": "all_of", "authn": ["any-client", "batch-keys"],
             "authz": {"scopes_all": ["batch:run"]}},
            {"name": "both_consumer", "authn_mode": "all_of",
             "authn": ["any-client", "batch-keys"], "authz": {"consumers": ["orders-batch"]}},
        ],
    }  # fmt: skip
    return write_config(e2e_dir / "extauthz-mtls.yaml", data)


@pytest.fixture(scope="module")
def stack(
    extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path, pki: Pki, stack_transport: str
) -> Iterator[TlsStack]:
    running = start_tls_stack(
        extauthz_config,
        echo_port=echo.port,
        log_dir=e2e_dir / f"logs-{stack_transport}",
        cert_dir=pki.dir,
        routes=ENVOY_ROUTES,
        transport=stack_transport,
    )
    try:
        yield running
    finally:
        running.stop()


def _tls_refused(stack: TlsStack, client: ClientCert | None, *, max_tls: str | None) -> str:
    """Expect the strict listener to end the TLS handshake; return the client's error text."""
    with pytest.raises((ssl.SSLError, ConnectionError)) as caught:
        stack.tls(WORKLOADS, client, max_tls=max_tls)
    return str(caught.value)


# -- the deploy file's listener: Envoy verifies, extauthz re-verifies and applies the rules -----


def test_spiffe_client_is_allowed_and_identified(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(WORKLOADS, pki["orders"]))
    assert seen["x-auth-subject"] == ORDERS_ID
    assert seen["x-auth-spiffe-id"] == ORDERS_ID
    assert seen["x-auth-method"] == "mtls"
    assert seen["x-auth-cert-sha256"] == pki.issued["orders"].sha256_hex
    assert "x-auth-methods" not in seen  # one method only


def test_exact_spiffe_id_rule_allows_another_namespace(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(WORKLOADS, pki["invoicer"]))
    assert seen["x-auth-subject"] == INVOICER_ID


@pytest.mark.parametrize("client", ["frontend", "foreign"])
def test_verified_client_outside_the_principal_rules_is_403(
    stack: TlsStack, pki: Pki, client: str
) -> None:
    # The certificate is fine (Envoy and extauthz both verified it): known, but not allowed.
    r = stack.tls(WORKLOADS, pki[client])
    assert_denied(r, 403, "forbidden")
    assert not any(c.startswith("ClientCert") for c in r.header_values("www-authenticate"))


def test_dns_only_certificate_is_named_by_its_dns_san(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(ANY, pki["dns_only"]))
    assert seen["x-auth-subject"] == "batch.internal.example"
    assert "x-auth-spiffe-id" not in seen


def test_dns_only_certificate_matches_no_spiffe_rule(stack: TlsStack, pki: Pki) -> None:
    assert_denied(stack.tls(WORKLOADS, pki["dns_only"]), 403, "forbidden")


def test_certificate_without_sans_is_named_by_its_subject_dn(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(ANY, pki["dn_only"]))
    assert seen["x-auth-subject"] == "CN=legacy-client,O=extauthz tests"


@pytest.mark.parametrize(
    ("client", "alert"),
    [
        ("expired", "CERTIFICATE_EXPIRED"),
        ("not_yet_valid", "CERTIFICATE_EXPIRED"),  # BoringSSL's alert for "not yet valid" too
        ("other_ca", "UNKNOWN_CA"),
        ("server_eku", "UNSUPPORTED_CERTIFICATE"),
        (None, "HANDSHAKE_FAILURE"),
    ],
)
def test_strict_listener_refuses_bad_certificates_in_the_handshake(
    stack: TlsStack, pki: Pki, client: str | None, alert: str
) -> None:
    # require_client_certificate + trusted_ca: Envoy ends the TLS handshake; there is no HTTP
    # response and extauthz is never asked (its own refusals are tested on `permissive` below).
    # Over TLS 1.2 the client sees Envoy's alert, which names the reason. (BoringSSL also checks
    # the certificate's purpose: an EKU without clientAuth fails here.)
    error = _tls_refused(stack, pki[client] if client else None, max_tls="1.2")
    assert alert in error, error


def test_strict_listener_refusal_over_tls13(stack: TlsStack, pki: Pki) -> None:
    # TLS 1.3: the client has finished its handshake before Envoy checks the certificate; the
    # refusal surfaces on the first read, as Envoy's alert or (racing the close) a bare EOF.
    error = _tls_refused(stack, pki["expired"], max_tls=None)
    assert "CERTIFICATE_EXPIRED" in error or "EOF" in error or "reset" in error.lower(), error


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("no_eku", "no extendedKeyUsage at all: Envoy accepts it, extauthz requires clientAuth"),
        ("two_uris", "a SPIFFE ID must be the only URI SAN (X509-SVID); Envoy does not care"),
        ("ca_leaf", "a CA certificate presented as a client certificate"),
    ],
)
def test_extauthz_refuses_what_envoys_tls_check_lets_through(
    stack: TlsStack, pki: Pki, client: str, why: str
) -> None:
    r = stack.tls(ANY, pki[client])
    assert_denied(r, 401, "cert_invalid", challenge_contains=(CLIENT_CERT, INVALID_CERT))


def test_intermediate_issued_client_is_allowed_with_the_xfcc_chain(
    stack: TlsStack, pki: Pki
) -> None:
    # Envoy's source.certificate is only the leaf; with xfcc: true, extauthz takes the
    # intermediates from the sanitized XFCC element of the same certificate (and verifies them).
    seen = upstream_headers(stack.tls(XFCC_PATH, pki["via_intermediate"]))
    assert seen["x-auth-subject"] == ORDERS_ID


def test_intermediate_issued_client_without_xfcc_is_401_untrusted_cert(
    stack: TlsStack, pki: Pki
) -> None:
    # Documented limitation: without XFCC, extauthz only ever sees the leaf (Envoy 1.40 puts no
    # intermediates in source.certificate), so a root-only trust bundle cannot verify it.
    r = stack.tls(WORKLOADS, pki["via_intermediate"])
    assert_denied(r, 401, "untrusted_cert", challenge_contains=(CLIENT_CERT, INVALID_CERT))


def test_intermediate_in_the_trust_bundle_is_the_workaround(stack: TlsStack, pki: Pki) -> None:
    # Until then: with the intermediate itself in extauthz's trust bundle (as an anchor) the
    # leaf alone verifies.
    seen = upstream_headers(stack.tls(ANY_INTERMEDIATE, pki["via_intermediate"]))
    assert seen["x-auth-subject"] == ORDERS_ID


def test_client_sent_identity_headers_are_replaced(stack: TlsStack, pki: Pki) -> None:
    r = stack.tls(WORKLOADS, pki["orders"], {
        "x-auth-subject": "admin", "x-auth-spiffe-id": INVOICER_ID, "x-auth-methods": "basic",
    })  # fmt: skip
    seen = upstream_headers(r)
    assert seen["x-auth-subject"] == ORDERS_ID
    assert seen["x-auth-spiffe-id"] == ORDERS_ID
    assert "x-auth-methods" not in seen


def test_disabled_route_needs_the_tls_handshake_only(stack: TlsStack, pki: Pki) -> None:
    # The deploy file's /static/ route: extauthz is not asked (a SPIFFE ID outside the rules
    # gets through), Envoy strips client-sent x-auth-* itself.
    seen = upstream_headers(
        stack.tls("/static/logo.png", pki["frontend"], {"x-auth-subject": "admin"})
    )
    assert not any(name.startswith("x-auth-") for name in seen)


# -- what Envoy 1.40 writes into XFCC (SANITIZE_SET) --------------------------------------------


def test_envoy_writes_xfcc_that_extauthz_parses(stack: TlsStack, pki: Pki) -> None:
    # On a route whose authenticator does not read XFCC, the upstream gets Envoy's header as is.
    # Wire facts (Envoy 1.40, set_current_client_cert_details all on), in this order:
    # By = the URI SAN of Envoy's own certificate (no By when it has none); Hash = hex SHA-256
    # of the leaf DER; Cert and Chain = URL-encoded PEM *in double quotes*, Chain being the
    # certificates the client sent (leaf first); Subject in RFC 2253 order (CN first), quoted;
    # URI; DNS. A client-sent XFCC is dropped (replaced, not appended to).
    forged = xfcc_for(pki.issued["invoicer"], uri=INVOICER_ID)
    client = pki.issued["orders"]
    seen = upstream_headers(stack.tls(WORKLOADS, pki["orders"], {XFCC: forged}))
    header = seen[XFCC]
    assert header.startswith(
        f'By={ENVOY_ID};Hash={client.sha256_hex};Cert="-----BEGIN%20CERTIFICATE-----'
    )
    (element,) = parse_xfcc(header)  # one element: the client's forgery was dropped
    assert element.by == (ENVOY_ID,)
    assert element.hash == client.sha256_hex
    assert element.cert == client.pem
    # Chain = the certificates the client sent, leaf first. (Python's OpenSSL client with no
    # explicit chain appends the CA from its own trust store, so here: leaf, root.)
    chain = element.chain or ""
    assert chain.startswith(client.pem)
    assert chain.removeprefix(client.pem) in ("", pki.ca.pem)
    assert element.subject == "CN=orders,O=extauthz tests"
    assert element.uri == (ORDERS_ID,)
    assert element.dns == ()


def _xfcc_shape(header: str) -> str:
    """The header with the values of Hash, Cert and Chain elided (``Hash;Cert;Chain``)."""
    return re.sub(r'(Hash)=[0-9a-f]{64}|(Cert|Chain)="[^"]*"', lambda m: m[1] or m[2], header)


@pytest.mark.parametrize(
    ("client", "tail"),
    [
        # no URI SAN: an empty URI= (which extauthz's parser reads as absent); no DNS SAN: no DNS
        ("dns_only", 'Subject="CN=batch,O=extauthz tests";URI=;DNS=batch.internal.example'),
        ("dn_only", 'Subject="CN=legacy-client,O=extauthz tests";URI='),
        # several URI SANs: URI repeated, in certificate order
        ("two_uris", f'Subject="CN=orders,O=extauthz tests";URI={ORDERS_ID};'
                     "URI=https://orders.example/"),
    ],
)  # fmt: skip
def test_envoy_xfcc_names(stack: TlsStack, pki: Pki, client: str, tail: str) -> None:
    seen = upstream_headers(stack.tls("/static/x", pki[client]))
    assert _xfcc_shape(seen[XFCC]) == f"By={ENVOY_ID};Hash;Cert;Chain;{tail}"
    parse_xfcc(seen[XFCC])  # and it parses


def test_envoy_xfcc_chain_carries_the_intermediates_the_client_sent(
    stack: TlsStack, pki: Pki
) -> None:
    seen = upstream_headers(stack.tls("/static/x", pki["via_intermediate"]))
    (element,) = parse_xfcc(seen[XFCC])
    assert element.cert == pki.issued["via_intermediate"].pem
    assert element.chain == pki["via_intermediate"].cert.read_text()  # leaf + intermediate


# -- permissive listener: whatever the client presents reaches extauthz --------------------------


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("expired", "cert_expired"),
        ("not_yet_valid", "cert_not_yet_valid"),
        ("other_ca", "untrusted_cert"),
        ("server_eku", "cert_invalid"),
        ("no_eku", "cert_invalid"),
        ("ca_leaf", "cert_invalid"),
    ],
)
def test_extauthz_reverifies_certificates_envoy_let_through(
    stack: TlsStack, pki: Pki, client: str, reason: str
) -> None:
    r = stack.tls(ANY, pki[client], listener="permissive")
    assert_denied(r, 401, reason, challenge_contains=(CLIENT_CERT, INVALID_CERT))


def test_untrusted_certificate_is_not_cached_as_trusted(stack: TlsStack, pki: Pki) -> None:
    # Same SPIFFE ID as an allowed certificate, other CA; asked twice (the cache is by the leaf's
    # fingerprint, so a good certificate verified earlier must not vouch for this one).
    upstream_headers(stack.tls(WORKLOADS, pki["orders"], listener="permissive"))
    for _ in range(2):
        r = stack.tls(WORKLOADS, pki["other_ca"], listener="permissive")
        assert_denied(r, 401, "untrusted_cert")


def test_no_certificate_is_401_with_a_plain_clientcert_challenge(stack: TlsStack) -> None:
    r = stack.tls(ANY, None, listener="permissive")
    assert_denied(r, 401, "missing_credential")
    assert r.header_values("www-authenticate") == [CLIENT_CERT]


def test_valid_certificate_on_the_permissive_listener_is_allowed(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(WORKLOADS, pki["orders"], listener="permissive"))
    assert seen["x-auth-subject"] == ORDERS_ID


# -- XFCC as the certificate source --------------------------------------------------------------


def test_xfcc_route_reads_the_certificate_envoy_forwarded(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(XFCC_PATH, pki["orders"], listener="xfcc"))
    assert seen["x-auth-subject"] == ORDERS_ID
    assert seen["x-auth-spiffe-id"] == ORDERS_ID
    assert seen["x-auth-cert-sha256"] == pki.issued["orders"].sha256_hex
    # xfcc: true makes XFCC a credential: stripped before the upstream (strip_credentials).
    assert XFCC not in seen


def test_peer_certificate_wins_over_xfcc_and_xfcc_is_still_stripped(
    stack: TlsStack, pki: Pki
) -> None:
    # The strict listener sends both (include_peer_certificate and Envoy's XFCC).
    seen = upstream_headers(stack.tls(XFCC_PATH, pki["orders"]))
    assert seen["x-auth-subject"] == ORDERS_ID
    assert XFCC not in seen


def test_xfcc_route_verifies_intermediates_from_the_xfcc_chain(stack: TlsStack, pki: Pki) -> None:
    # Unlike source.certificate, Envoy's XFCC Chain carries the intermediate: this verifies.
    seen = upstream_headers(stack.tls(XFCC_PATH, pki["via_intermediate"], listener="xfcc"))
    assert seen["x-auth-subject"] == ORDERS_ID


@pytest.mark.parametrize(
    ("client", "reason"),
    [("expired", "cert_expired"), ("other_ca", "untrusted_cert"), ("no_eku", "cert_invalid")],
)
def test_xfcc_certificate_is_reverified(
    stack: TlsStack, pki: Pki, client: str, reason: str
) -> None:
    r = stack.tls(XFCC_PATH, pki[client], listener="xfcc")
    assert_denied(r, 401, reason, challenge_contains=(CLIENT_CERT, INVALID_CERT))


def test_client_forged_xfcc_is_replaced_by_envoy(stack: TlsStack, pki: Pki) -> None:
    # The `orders` client sends a well-formed XFCC naming the invoicer's (public) certificate.
    # SANITIZE_SET replaces it with the certificate of the TLS connection: orders, not invoicer.
    forged = xfcc_for(pki.issued["invoicer"], chain=[pki.issued["invoicer"]], uri=INVOICER_ID)
    seen = upstream_headers(stack.tls(XFCC_PATH, pki["orders"], {XFCC: forged}, listener="xfcc"))
    assert seen["x-auth-subject"] == ORDERS_ID


def test_client_forged_xfcc_without_a_certificate_is_removed(stack: TlsStack, pki: Pki) -> None:
    forged = xfcc_for(pki.issued["orders"], chain=[pki.issued["orders"]], uri=ORDERS_ID)
    r = stack.tls(XFCC_PATH, None, {XFCC: forged}, listener="xfcc")
    assert_denied(r, 401, "missing_credential", challenge=CLIENT_CERT)


def test_forged_xfcc_over_plain_http_is_sanitized_and_not_trusted(
    stack: TlsStack, pki: Pki
) -> None:
    """A client without any TLS sends an XFCC header built from a real, valid certificate.

    Certificates are public, so anyone can build this header; only the private key proves
    possession, and XFCC carries none. What makes XFCC trustworthy is that the Envoy in front
    removes a client-sent one. Two requests prove it, with the same forged header:

    1. ``unsanitized`` (ALWAYS_FORWARD_ONLY, the misconfiguration the docs warn about): the
       header reaches extauthz and is **accepted** — so the forgery is complete and valid, and a
       401 elsewhere cannot be blamed on a defect in it;
    2. ``plain`` (SANITIZE, as in deploy/envoy/envoy.yaml): Envoy removes the header, extauthz
       sees no credential at all: 401 ``missing_credential`` (not ``cert_invalid``: nothing of
       the forgery arrived).

    (``forward_only``, FORWARD_ONLY, behaves like ``plain`` here: Envoy 1.40 forwards a
    client-sent XFCC under FORWARD_ONLY / APPEND_FORWARD only on a connection that presented a
    client certificate — on an mTLS edge listener those modes *would* let a client with any
    valid certificate claim another one's.)
    """
    forged = xfcc_for(pki.issued["orders"], chain=[pki.issued["orders"]], uri=ORDERS_ID)
    accepted = upstream_headers(stack.plain(XFCC_PATH, {XFCC: forged}, listener="unsanitized"))
    assert accepted["x-auth-subject"] == ORDERS_ID  # the danger of not sanitizing
    for listener in ("plain", "forward_only"):
        r = stack.plain(XFCC_PATH, {XFCC: forged}, listener=listener)
        assert_denied(r, 401, "missing_credential", challenge=CLIENT_CERT)


def test_xfcc_is_ignored_unless_the_authenticator_enables_it(stack: TlsStack, pki: Pki) -> None:
    # xfcc: false (the default): even an Envoy that forwards a client's XFCC cannot make
    # extauthz read it.
    forged = xfcc_for(pki.issued["orders"], chain=[pki.issued["orders"]], uri=ORDERS_ID)
    r = stack.plain(ANY, {XFCC: forged}, listener="unsanitized")
    assert_denied(r, 401, "missing_credential", challenge=CLIENT_CERT)


# -- all_of: a certificate AND an API key --------------------------------------------------------


def test_all_of_with_both_credentials_is_allowed(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(BOTH, pki["orders"], {"x-api-key": BATCH_KEY}))
    assert seen["x-auth-subject"] == ORDERS_ID  # the first method's identity
    assert seen["x-auth-method"] == "mtls"
    assert seen["x-auth-methods"] == "mtls,api_key"
    assert seen["x-auth-scopes"] == "batch:run"  # the union of what the methods granted
    assert seen["x-auth-spiffe-id"] == ORDERS_ID
    assert "x-api-key" not in seen


def test_all_of_keeps_the_api_key_consumer(stack: TlsStack, pki: Pki) -> None:
    seen = upstream_headers(stack.tls(BOTH, pki["orders"], {"x-api-key": BATCH_KEY}))
    assert seen.get("x-auth-consumer") == "orders-batch"
    seen = upstream_headers(stack.tls(BOTH_CONSUMER, pki["orders"], {"x-api-key": BATCH_KEY}))
    assert seen["x-auth-subject"] == ORDERS_ID


def test_all_of_with_only_the_certificate_challenges_only_the_key(
    stack: TlsStack, pki: Pki
) -> None:
    r = stack.tls(BOTH, pki["orders"])
    assert_denied(r, 401, "missing_credential")
    assert r.header_values("www-authenticate") == [APIKEY_CHALLENGE]


def test_all_of_with_only_the_key_challenges_only_the_certificate(stack: TlsStack) -> None:
    r = stack.tls(BOTH, None, {"x-api-key": BATCH_KEY}, listener="permissive")
    assert_denied(r, 401, "missing_credential")
    assert r.header_values("www-authenticate") == [CLIENT_CERT]


def test_all_of_with_a_wrong_key_is_401(stack: TlsStack, pki: Pki) -> None:
    r = stack.tls(BOTH, pki["orders"], {"x-api-key": "eak_not_the_key"})
    assert_denied(r, 401, "invalid_api_key", challenge_contains=(APIKEY_CHALLENGE,))


def test_all_of_with_an_expired_certificate_is_401(stack: TlsStack, pki: Pki) -> None:
    r = stack.tls(BOTH, pki["expired"], {"x-api-key": BATCH_KEY}, listener="permissive")
    assert_denied(r, 401, "cert_expired", challenge_contains=(CLIENT_CERT, INVALID_CERT))


# -- deploy/envoy/envoy-mtls.yaml ----------------------------------------------------------------


def test_deploy_mtls_config_passes_envoy_validate(tmp_path: Path, pki: Pki) -> None:
    # The file as shipped: its relative certificate paths resolved from Envoy's working directory
    # (validate mode loads the certificates).
    for relative, name in CERT_PATHS.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki.dir / name, tmp_path / relative)
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(MTLS_ENVOY_CONFIG), "--log-level",
         "warn", "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_deploy_mtls_config_says_what_the_readme_says() -> None:
    data = yaml.safe_load(MTLS_ENVOY_CONFIG.read_text())
    (listener,) = data["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert "trusted_ca" in tls["common_tls_context"]["validation_context"]
    assert "trust_chain_verification" not in tls["common_tls_context"]["validation_context"]
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    details = hcm["set_current_client_cert_details"]
    assert details["cert"] is True and details["chain"] is True
    (ext_authz,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert ext_authz["typed_config"]["include_peer_certificate"] is True
    assert ext_authz["typed_config"]["failure_mode_allow"] is False
    addresses = [a for a in _socket_addresses(data)]
    assert {a["address"] for a in addresses} == {"127.0.0.1"}


def _socket_addresses(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("socket_address"), dict):
            yield node["socket_address"]
        for value in node.values():
            yield from _socket_addresses(value)
    elif isinstance(node, list):
        for value in node:
            yield from _socket_addresses(value)
