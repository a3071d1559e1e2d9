"""Properties of HTTP message signatures: RFC 9421 ``Signature-Input`` / ``Signature`` and
draft-cavage ``Authorization: Signature ...`` parameters, through the hmac authenticators of the
all-kinds configuration.

Inputs: random and grammar-shaped header values, and mutations of a correctly signed request
(so parsing succeeds and the later stages — components, time, nonce, digest — see odd values).
Invariant: the authenticator raises only ``AuthenticationError`` (or ``DependencyUnavailable``
from the replay store, which these tests never fill), and a mutated request is accepted only
when what it signs is unchanged.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz import sfv
from extauthz.authn.base import Authenticator
from extauthz.authn.hmac_sig import sign, signature_base
from extauthz.errors import AuthenticationError
from extauthz.types import Headers, RequestView
from tests.support.allkinds import HMAC_SECRET, AllKinds, Running, write_all_kinds
from tests.support.hypo import budget


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("prop-hmac"))


@pytest.fixture(scope="module")
def running(kinds: AllKinds) -> Iterator[Running]:
    with Running(kinds) as started:
        yield started


def _view(headers: dict[str, str], body: bytes = b"") -> RequestView:
    return RequestView(method="POST", host="api.example.com", path="/hmac/x", raw_query="a=1",
                       headers=Headers({":authority": "api.example.com", **headers}), body=body)


def _outcome(authenticator: Authenticator, running: Running, view: RequestView) -> str:
    try:
        identity = running.run(authenticator.authenticate(view))
    except AuthenticationError as exc:
        # public-safe: a fixed text, never Python's error message about the client's input
        assert "literal" not in exc.description and exc.description.isascii(), exc.description
        return exc.reason.value
    return "allow" if identity is not None else "absent"


_SF_PIECES = ['sig1=', "(", ")", '"@method"', '"@path"', '"@authority"', '"@query"', '"date"',
              '"content-digest"', '"@query-param";name="a"', '"x";key="k"', ";created=",
              ";expires=", ";keyid=", '"k1"', ";nonce=", ";alg=", '"hmac-sha256"', ";tag=",
              "1700000000", "-1", "99999999999999", " ", ",", ":", "YWJj", "=", ";", '"', "\\",
              "?1", "1.5", "tok", "é"]
sf_values = st.one_of(st.lists(st.sampled_from(_SF_PIECES), max_size=20).map("".join),
                      st.text(max_size=60))


@budget(300)
@given(sf_values, sf_values, st.one_of(st.none(), st.text(max_size=30)))
def test_rfc9421_random_headers_are_refused_cleanly(
    running: Running, signature_input: str, signature: str, date: str | None
) -> None:
    headers = {"signature-input": signature_input, "signature": signature}
    if date is not None:
        headers["date"] = date
    outcome = _outcome(running.snapshot.authenticators["signed"], running, _view(headers))
    assert outcome != "allow"


def _signed(created: int, components: tuple[str, ...]) -> dict[str, str]:
    view = _view({"date": formatdate(created, usegmt=True), "content-type": "text/plain"})
    inner = sfv.InnerList([sfv.Item(c) for c in components],
                          {"created": created, "keyid": "k1"})
    mac = sign(HMAC_SECRET, signature_base(view, inner))
    return {"date": formatdate(created, usegmt=True), "content-type": "text/plain",
            "signature-input": "sig1=" + sfv.serialize_inner_list(inner),
            "signature": "sig1=" + sfv.serialize_item(sfv.Item(mac))}


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    out = list(text)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out)))
        char = draw(st.sampled_from('abc019();=", :\\@-é\x00'))
        if at == len(out) or draw(st.booleans()):
            out.insert(at, char)
        else:
            out[at] = char
    return "".join(out)


@budget(300)
@given(st.data())
def test_rfc9421_mutated_signatures_are_refused_cleanly(running: Running,
                                                        data: st.DataObject) -> None:
    components = ("@method", "@authority", "@path", "@query", "date", "content-type")
    headers = _signed(int(time.time()), components)
    authenticator = running.snapshot.authenticators["signed"]
    name = data.draw(st.sampled_from(["signature-input", "signature", "date", "content-type"]))
    original = headers[name]
    headers[name] = data.draw(mutated(original))
    outcome = _outcome(authenticator, running, _view(headers))
    if outcome == "allow":  # only a change that does not alter what is signed may pass
        if name == "signature":
            assert sfv.parse_dictionary(headers[name]) == sfv.parse_dictionary(original)
        elif name != "signature-input":  # field values are compared trimmed (RFC 9421 §2.1)
            assert headers[name].strip(" \t") == original


_CAVAGE_PIECES = ['keyId="k1"', 'username="k1"', 'algorithm="hmac-sha256"', 'algorithm="hs2019"',
                  'headers="(request-target) date"', 'headers="@request-target date"',
                  'headers="date (created) (expires)"', 'headers="request-line x-date"',
                  'headers=""', 'signature="YWJj"', 'signature="!!"', "created=1700000000",
                  "created=²", "expires=٣", ",", " ", "=", '"', "\\", "\\\"", "keyId", "é"]
cavage_values = st.one_of(st.lists(st.sampled_from(_CAVAGE_PIECES), max_size=8).map(",".join),
                          st.lists(st.sampled_from(_CAVAGE_PIECES), max_size=8).map("".join),
                          st.text(max_size=60))
http_dates = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["Mon, 01 Jan 99999 00:00:00 GMT", "Mon, 01 Jan 0001 00:00:00 +1400",
                     "Thu, 01 Jan 1970 00:00:00", "Fri, 31 Dec 9999 23:59:59 -2359", "1", ""]),
    st.integers(-(2**40), 2**40).map(lambda t: formatdate(t, usegmt=True)
                                     if 0 <= t < 253402300799 else str(t)),
)


@budget(400)
@given(st.sampled_from(["Signature ", "signature ", "HMAC ", ""]), cavage_values, http_dates)
def test_cavage_random_parameters_are_refused_cleanly(
    running: Running, scheme: str, params: str, date: str
) -> None:
    headers = {"date": date, "x-date": date}
    if scheme:
        headers["authorization"] = scheme + params
    else:
        headers["signature"] = params
    outcome = _outcome(running.snapshot.authenticators["signed-cavage"], running,
                       _view(headers))
    assert outcome != "allow"


_CAVAGE_GOOD = {"keyId": '"k1"', "algorithm": '"hmac-sha256"',
                "headers": '"(request-target) date (created) (expires)"',
                "created": "1700000000", "expires": "1700000060", "signature": '"YWJj"'}
_odd_values = st.one_of(st.sampled_from(["²", "٣", "-1", "1e3", "", '""', '"', "9" * 16,
                                         '"a\\"b"', "0x10", " 1"]), st.text(max_size=12))


@st.composite
def cavage_params(draw: st.DrawFn) -> str:
    """The good parameter set with one or two values replaced (later stages get odd values)."""
    params = dict(_CAVAGE_GOOD)
    for name in draw(st.lists(st.sampled_from(sorted(params)), min_size=1, max_size=2)):
        params[name] = draw(_odd_values)
    return ",".join(f"{k}={v}" for k, v in params.items())


@budget(300)
@given(cavage_params(), http_dates)
def test_cavage_odd_parameter_values_are_refused_cleanly(
    running: Running, params: str, date: str
) -> None:
    headers = {"date": date, "authorization": "Signature " + params}
    outcome = _outcome(running.snapshot.authenticators["signed-cavage"], running,
                       _view(headers))
    assert outcome != "allow"


@budget(100)
@given(st.binary(max_size=64))
def test_cavage_signature_of_other_bytes_is_refused(running: Running, mac: bytes) -> None:
    date = formatdate(time.time(), usegmt=True)
    params = (f'keyId="k1",algorithm="hmac-sha256",headers="(request-target) date",'
              f'signature="{base64.b64encode(mac).decode()}"')
    outcome = _outcome(running.snapshot.authenticators["signed-cavage"], running,
                       _view({"date": date, "authorization": "Signature " + params}))
    assert outcome != "allow"
