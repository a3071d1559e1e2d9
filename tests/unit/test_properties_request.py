"""Properties of the request readers: CheckRequest -> RequestView, Authorization schemes, Basic
credentials, cookies, query strings, the signature-component counter.

Invariant: only the documented exception types escape (``BadRequestError`` from reading a
request, ``MalformedCredentials`` from Basic parsing, nothing at all from the rest). Budgets:
:mod:`tests.support.hypo`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn.basic import MalformedCredentials, parse_basic_credentials
from extauthz.authn.sources import Source
from extauthz.decision import Outcome
from extauthz.errors import BadRequestError
from extauthz.request import (
    _parse_query,
    from_check_request,
    path_is_normalized,
    signature_components,
    split_host,
)
from extauthz.types import Headers, RequestView
from tests.support.allkinds import Running, check_request, write_all_kinds
from tests.support.hypo import budget

# Header-ish text: mostly printable ASCII with the separators parsers care about, sometimes
# anything (control characters, non-ASCII, lone surrogates as raw_value decoding can produce).
_SEPARATORS = st.sampled_from([" ", "\t", ",", ";", "=", ":", '"', "\\", "(", ")", ".", "%"])
_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_anything = st.text(max_size=40)
_chunk = st.one_of(_ascii, _SEPARATORS, _anything)
header_text = st.lists(_chunk, max_size=12).map("".join)
header_names = st.one_of(
    st.sampled_from(["authorization", "cookie", "x-api-key", "signature", "signature-input",
                     "x-forwarded-client-cert", "content-digest", "digest", "host", ":path",
                     ":authority", ":method", "x-request-id", "date"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    st.text(min_size=0, max_size=10),
)


def _wire(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def view(headers: dict[str, str] | None = None, **kwargs: Any) -> RequestView:
    return RequestView(method="GET", host="h", path="/", headers=Headers(headers or {}), **kwargs)


# -- Authorization header and schemes ------------------------------------------------------------


@budget(300)
@given(header_text, st.sampled_from(["bearer", "basic", "signature", "apikey"]))
def test_authorization_scheme_source_never_raises(value: str, scheme: str) -> None:
    source = Source(scheme=scheme)
    got = source.read(view({"authorization": value}))
    if got is not None:
        assert value.strip().partition(" ")[0].lower() == scheme
        assert got == got.strip()


@budget(300)
@given(st.text(max_size=200))
def test_basic_credentials_raise_only_malformed(token: str) -> None:
    try:
        user, _password = parse_basic_credentials(token)
    except MalformedCredentials:
        return
    assert user and ":" not in user


_no_ctl = st.characters(blacklist_categories=("Cc", "Cs"))


@budget(200)
@given(st.text(_no_ctl, min_size=1, max_size=40).filter(lambda u: ":" not in u),
       st.text(_no_ctl, max_size=60))
def test_basic_credentials_round_trip(user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert parse_basic_credentials(token) == (user, password)


# -- cookies and query strings -------------------------------------------------------------------


@budget(300)
@given(header_text, st.text(max_size=8))
def test_cookie_lookup_never_raises(cookie: str, name: str) -> None:
    got = view({"cookie": cookie}).cookie(name)
    assert got is None or isinstance(got, str)


_cookie_token = st.text(st.sampled_from("abcxyz019-_."), min_size=1, max_size=8)


@budget(200)
@given(st.lists(st.tuples(_cookie_token, _cookie_token), min_size=1, max_size=6))
def test_cookie_first_pair_wins(pairs: list[tuple[str, str]]) -> None:
    header = "; ".join(f"{k}={v}" for k, v in pairs)
    name = pairs[-1][0]
    first = next(v for k, v in pairs if k == name)
    assert view({"cookie": header}).cookie(name) == first


@budget(300)
@given(st.one_of(header_text, st.lists(st.sampled_from(["a=1", "&", "b", "=", "%", "%zz", "+",
                                                         ";", "a=%ff"]), max_size=300)
                 .map("".join)))
def test_query_parsing_raises_only_bad_request(raw: str) -> None:
    try:
        out = _parse_query(raw)
    except BadRequestError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


# -- the whole CheckRequest ----------------------------------------------------------------------


_values = st.one_of(header_text, st.binary(max_size=60).map(lambda b: b.decode("latin-1")))


@budget(300)
@given(
    path=st.one_of(header_text, st.just("")),
    method=st.one_of(st.sampled_from(["GET", "post", "", "DELETE"]), _anything),
    host=st.one_of(header_text, st.sampled_from(["[::1]:80", "a:b:c", "H:8080", "["])),
    headers=st.dictionaries(header_names, _values, max_size=8),
    body=st.binary(max_size=64),
    extensions=st.dictionaries(_anything, _anything, max_size=3),
)
def test_reading_a_check_request_raises_only_bad_request(
    path: str, method: str, host: str, headers: dict[str, str], body: bytes,
    extensions: dict[str, str],
) -> None:
    request = check_request(path, headers, method=method, host=host, body=body,
                            context_extensions=extensions)
    try:
        got = from_check_request(request)
    except BadRequestError:
        return
    assert got.path  # never empty ("/" when Envoy sent none)
    # every byte received is counted (names Envoy would have lowercased to one: each of them)
    assert got.header_bytes >= sum(_wire(k) + _wire(v) for k, v in got.headers.items())
    assert got.body == body


# names whose lowercase is another string (Greek sigmas, dotted I, titlecase DZ, capital sharp s) or
# the same one, in any mix: the reader decides with one test on all names joined
_CASED = "aAzZ\u03c3\u03a3\u03c2\u0130i\u01c5\u01c6\u00df\u1e9e-:\u03a9\u03c9K\u212a"
_cased_names = st.one_of(
    header_names,
    st.text(st.sampled_from(_CASED), min_size=1, max_size=6),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
)


@budget(300)
@given(st.dictionaries(_cased_names, st.text(st.characters(blacklist_categories=("Cs",)),
                                             max_size=20), max_size=8))
def test_headers_are_lowercased_and_counted_as_each_name_says(headers: dict[str, str]) -> None:
    """The map form: the headers are every name lowercased (the last of names that lowercase to
    one wins, in the map's order), counted in UTF-8 bytes as received; decided per name, as the
    definition says, whatever the reader does to be fast (differential)."""
    request = check_request("/p", headers)
    received = dict(request.attributes.request.http.headers)
    expected: dict[str, str] = {}
    for key, value in received.items():
        expected[key.lower()] = value
    got = from_check_request(request)
    assert dict(got.headers.items()) == expected
    assert got.header_bytes == sum(len(k.encode()) + len(v.encode()) for k, v in received.items())


@budget(300)
@given(st.lists(st.tuples(header_names.map(str.lower), st.binary(max_size=40)), max_size=12))
def test_raw_header_map_is_read_and_counted(raw: list[tuple[str, bytes]]) -> None:
    """``encode_raw_headers``: any bytes (not UTF-8 too) are read, repeats joined with ','."""
    got = from_check_request(check_request("/p", raw_headers=raw))
    names = {k for k, _ in raw}
    assert set(got.headers) == names
    assert got.header_bytes == sum(len(k.encode()) + len(v.encode("utf-8", "surrogateescape"))
                                   for k, v in got.headers.items())
    for name in names:
        parts = [v.decode("utf-8", "surrogateescape") for k, v in raw if k == name]
        assert got.headers[name] == ",".join(parts)


@budget(300)
@given(header_text)
def test_host_and_path_helpers_never_raise(text: str) -> None:
    host = split_host(text)
    assert host == host.lower() or not host.isascii()
    assert isinstance(path_is_normalized(text), bool)


@budget(300)
@given(st.dictionaries(st.sampled_from(["signature-input", "signature", "authorization"]),
                       st.one_of(header_text, st.lists(st.sampled_from(
                           ['"', "(", ")", "=", "\\", " ", "headers", '="', "a", ","]),
                           max_size=60).map("".join))))
def test_signature_component_count_never_raises(headers: dict[str, str]) -> None:
    assert signature_components(Headers(headers)) >= 0


# -- headers nobody reads do not change a decision -----------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    kinds = write_all_kinds(tmp_path_factory.mktemp("prop-request"))
    with Running(kinds) as started:
        yield started, kinds.token(realm_access={"roles": ["admin"]})


@budget(150)
@given(st.binary(max_size=40), st.sampled_from(["x-latin1", "user-agent", "accept"]))
def test_unread_raw_header_bytes_do_not_change_the_decision(
    running: tuple[Running, str], value: bytes, name: str
) -> None:
    """Regression: a non-UTF-8 byte in any header (encode_raw_headers: ``café`` in Latin-1)
    made every CEL rule reading ``request.headers`` fail, so the route answered 403
    policy_error to a valid token."""
    started, token = running
    raw = [(":path", b"/jwt/x"), (":method", b"GET"), (":authority", b"api.example.com"),
           ("authorization", f"Bearer {token}".encode()), (name, value)]
    view = from_check_request(check_request("/jwt/x", raw_headers=raw))
    decision = started.run(started.engine.check(view))
    assert decision.outcome is Outcome.ALLOW, decision
