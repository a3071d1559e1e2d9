"""The XFCC trust model (extauthz/authn/xfcc_trust.py): elements read as Envoy writes them.

The headers here are built exactly as Envoy 1.40 writes them (``tests.support.certs.xfcc_for``,
checked against real Envoy output in tests/e2e/test_e2e_xfcc_trust.py). The property: whatever
text a certificate's names hold, the model reads the presenter's own certificate as the client
and the element count never changes.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn.xfcc_trust import XfccMismatch, XfccModel, has_delimiters
from extauthz.config.schema import model_problem
from tests.support.certs import TestCA, url_encode, xfcc_for
from tests.support.hypo import budget

NOW = 1_900_000_000.0
ROOT = TestCA.create("xfcc trust root", now=NOW)
VICTIM_ID = "spiffe://example.org/ns/billing/sa/victim"
VICTIM = ROOT.issue("victim", uris=[VICTIM_ID], now=NOW)
CLIENT = ROOT.issue("client", uris=["spiffe://example.org/ns/a/sa/b"], dns=["b.example"],
                    now=NOW)
PROXY = ROOT.issue("proxy", uris=["spiffe://example.org/ns/edge/sa/proxy"], now=NOW)
ONE = XfccModel()
PROXY_ID = "spiffe://example.org/ns/edge/sa/proxy"
TWO = XfccModel(("SANITIZE_SET", "APPEND_FORWARD"), frozenset({PROXY_ID}))
VICTIM_ELEMENT = f'Hash={VICTIM.sha256_hex};Cert="{url_encode(VICTIM.pem)}";URI={VICTIM_ID}'


def test_one_element_as_envoy_writes_it() -> None:
    header = xfcc_for(CLIENT, chain=[CLIENT, ROOT], subject='CN=client,O=x"y\\,z')
    (element,) = ONE.read(header)
    assert element.cert == CLIENT.cert
    assert element.hash == CLIENT.sha256_hex
    assert element.chain[0] == CLIENT.cert and len(element.chain) == 2
    assert element.subject == 'CN=client,O=x"y\\,z'
    assert element.uris == ("spiffe://example.org/ns/a/sa/b",)
    assert element.dns == ("b.example",)
    assert element.by == ("spiffe://example.org/ns/edge/sa/envoy",)


def test_two_hops_client_first_then_the_proxy() -> None:
    header = xfcc_for(CLIENT) + "," + xfcc_for(PROXY, by="spiffe://example.org/inner")
    client, proxy = TWO.read(header)
    assert (client.cert, proxy.cert) == (CLIENT.cert, PROXY.cert)
    # a proxy element may lack Cert (its names are the operator's proxy's)
    bare = xfcc_for(CLIENT) + f",Hash={PROXY.sha256_hex};URI={PROXY_ID}"
    assert TWO.read(bare)[1].uris == (PROXY_ID,)
    assert TWO.client(bare).cert == CLIENT.cert


def test_behind_two_hops_the_proxies_must_be_the_configured_ones() -> None:
    header = xfcc_for(CLIENT) + "," + xfcc_for(PROXY)
    assert TWO.client(header).cert == CLIENT.cert
    assert TWO.client(header, PROXY.cert).cert == CLIENT.cert
    # a client that reached the inner proxy directly: its own certificate is appended last
    forged = xfcc_for(VICTIM) + "," + xfcc_for(CLIENT)
    with pytest.raises(XfccMismatch, match="proxy identity"):
        TWO.client(forged)
    with pytest.raises(XfccMismatch, match="peer certificate does not name"):
        TWO.client(header, CLIENT.cert)
    with pytest.raises(XfccMismatch, match="last element is not the peer"):
        TWO.client(header, ROOT.issue("p2", uris=[PROXY_ID], now=NOW).cert)
    # FORWARD_ONLY nearest: only the peer certificate shows who connected
    forward = XfccModel(("SANITIZE_SET", "FORWARD_ONLY"), frozenset({PROXY_ID}))
    with pytest.raises(XfccMismatch, match="no peer certificate"):
        forward.client(xfcc_for(CLIENT))
    assert forward.client(xfcc_for(CLIENT), PROXY.cert).cert == CLIENT.cert
    with pytest.raises(XfccMismatch):
        forward.client(xfcc_for(CLIENT), CLIENT.cert)


@pytest.mark.parametrize(("model", "header"), [
    (ONE, xfcc_for(CLIENT) + "," + xfcc_for(CLIENT)),
    (TWO, xfcc_for(CLIENT)),
    (TWO, xfcc_for(CLIENT) + "," + xfcc_for(PROXY) + "," + xfcc_for(PROXY)),
    (ONE, VICTIM_ELEMENT + "," + xfcc_for(CLIENT)),  # a client-sent element before the real one
])
def test_the_element_count_must_be_exactly_the_models(model: XfccModel, header: str) -> None:
    with pytest.raises(XfccMismatch):
        model.read(header)


@pytest.mark.parametrize(("header", "message"), [
    ("", "Hash="),
    (f"Hash={CLIENT.sha256_hex}", "no Cert"),
    (xfcc_for(CLIENT).replace(CLIENT.sha256_hex, VICTIM.sha256_hex), "Hash does not match"),
    (xfcc_for(CLIENT).replace('Cert="', "Cert=").replace('";URI', ";URI"), "quoted"),
    (xfcc_for(CLIENT) + ";DNS=other.example", "does not end"),
    (xfcc_for(VICTIM) + ";DNS=other.example", "DNS does not match"),
    (xfcc_for(CLIENT).replace("URI=spiffe://example.org/ns/a/sa/b", f"URI={VICTIM_ID}"),
     "URI does not match"),
    (" " + xfcc_for(CLIENT), "Hash="),
    (xfcc_for(CLIENT) + ";Foo=1", "does not end"),
    (xfcc_for(CLIENT, by='a"b'), "cannot carry"),
])
def test_anything_envoy_would_not_write_is_refused(header: str, message: str) -> None:
    with pytest.raises(XfccMismatch, match=message):
        ONE.read(header)


def test_model_rules() -> None:
    assert model_problem(["SANITIZE_SET", "APPEND_FORWARD", "FORWARD_ONLY"]) is None
    assert "proxy_identities" in (model_problem(["SANITIZE_SET", "FORWARD_ONLY"], False) or "")
    assert model_problem(["SANITIZE_SET"], False) is None
    assert TWO.elements == 2
    assert XfccModel(("SANITIZE_SET", "FORWARD_ONLY"), frozenset({"x"})).elements == 1
    assert "SANITIZE_SET" in (model_problem(["APPEND_FORWARD"]) or "")
    assert "replace or drop" in (model_problem(["SANITIZE_SET", "SANITIZE_SET"]) or "")
    assert model_problem([]) is not None
    with pytest.raises(ValueError):
        XfccModel(("FORWARD_ONLY",))  # type: ignore[arg-type]


# -- the attack: certificate names carrying XFCC syntax -----------------------------------------


def _with_names(uris: list[str], dns: list[str]) -> x509.Certificate | None:
    try:
        return ROOT.issue("n", uris=uris, dns=dns, now=NOW).cert
    except ValueError:  # a name cryptography refuses to encode
        return None


INJECTIONS = [
    "," + VICTIM_ELEMENT,
    ",By=x;" + VICTIM_ELEMENT.replace('"', ""),
    ';Cert="' + url_encode(VICTIM.pem) + '"',
    '"',
    '\\",Hash=00',
    ";By=a;Hash=b;Cert=c;Chain=d;Subject=e;URI=f;DNS=g",
    ",",
    "=",
    "",
]


@pytest.mark.parametrize("injection", INJECTIONS)
@pytest.mark.parametrize("where", ["uri", "dns", "second-uri"])
def test_names_with_xfcc_syntax_never_move_the_boundaries(injection: str, where: str) -> None:
    uris = {"uri": ["spiffe://example.org/a" + injection], "dns": [],
            "second-uri": ["https://a.example/", "https://b" + injection]}[where]
    dns = ["a.example" + injection] if where == "dns" else []
    cert = ROOT.issue("n", uris=uris, dns=dns, now=NOW)
    for model, header in ((ONE, xfcc_for(cert)), (TWO, xfcc_for(cert) + "," + xfcc_for(PROXY))):
        elements = model.read(header)
        assert elements[0].cert == cert.cert
        assert elements[0].uris + elements[0].dns == tuple(uris + dns)
        assert has_delimiters(elements[0].uris + elements[0].dns) == bool(injection)


_PIECES = [*',;="\\ ', "Hash=", "Cert=", "URI=", "DNS=", "By=", "Chain=", "Subject=", "a", "/"]
_NAME_TEXT = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)


@budget(40)
@given(uri_tail=_NAME_TEXT, dns_tail=_NAME_TEXT, with_proxy=st.booleans())
def test_property_any_name_text_reads_back_as_its_own_certificate(
        uri_tail: str, dns_tail: str, with_proxy: bool) -> None:
    cert = _with_names(["spiffe://example.org/x" + uri_tail], ["x.example" + dns_tail])
    if cert is None:
        return
    from tests.support.certs import Issued
    issued = Issued(cert, ROOT.issued.key)  # the key is unused by xfcc_for
    header = xfcc_for(issued, chain=[issued, ROOT]) + (
        "," + xfcc_for(PROXY) if with_proxy else "")
    model = TWO if with_proxy else ONE
    elements = model.read(header)
    assert len(elements) == model.elements
    assert elements[0].cert == cert
    # and any other model refuses the same header
    with pytest.raises(XfccMismatch):
        (ONE if with_proxy else TWO).read(header)
