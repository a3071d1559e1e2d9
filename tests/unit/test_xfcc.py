"""The XFCC parser: Envoy's grammar, quoting, URL-encoded certificates, malformed input."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.authn.xfcc import (
    MAX_ELEMENTS,
    MAX_XFCC_LENGTH,
    XfccElement,
    XfccError,
    format_xfcc,
    parse_xfcc,
)
from tests.support.certs import TestCA, url_encode, xfcc_for

NOW = 1_900_000_000.0
CA = TestCA.create(now=NOW)
LEAF = CA.issue(uris=["spiffe://example.org/ns/a/sa/b"], now=NOW)


def test_single_element_as_envoy_writes_it() -> None:
    header = xfcc_for(LEAF, chain=[LEAF, CA], uri="spiffe://example.org/ns/a/sa/b",
                      dns=["a.example", "b.example"], subject='CN=x,O="q"')
    [element] = parse_xfcc(header)
    assert element.by == ("spiffe://example.org/ns/edge/sa/envoy",)
    assert element.hash == LEAF.sha256_hex
    assert element.cert == LEAF.pem
    assert element.chain == LEAF.pem + CA.pem
    assert element.subject == 'CN=x,O="q"'
    assert element.uri == ("spiffe://example.org/ns/a/sa/b",)
    assert element.dns == ("a.example", "b.example")


def test_envoy_documentation_example() -> None:
    header = (
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a'
        '02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
        'URI=http://testclient.lyft.com,'
        'By=http://backend.lyft.com;Hash=9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c01'
        '49c1309e;URI=http://frontend.lyft.com'
    )
    first, last = parse_xfcc(header)
    assert first.by == ("http://frontend.lyft.com",)
    assert first.subject == "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"
    assert first.uri == ("http://testclient.lyft.com",)
    assert last.by == ("http://backend.lyft.com",)
    assert last.uri == ("http://frontend.lyft.com",)
    assert last.cert is None


def test_quoted_values_with_escaped_quotes_and_separators() -> None:
    [element] = parse_xfcc(r'Subject="CN=a\"b\", O=c;d=e,f";URI=spiffe://td/x')
    assert element.subject == 'CN=a"b", O=c;d=e,f'
    assert element.uri == ("spiffe://td/x",)


def test_escaped_backslash_and_rfc4514_escapes_survive() -> None:
    [element] = parse_xfcc(r'Subject="CN=a\,b\\"')
    assert element.subject == "CN=a\\,b\\"


def test_keys_are_case_insensitive() -> None:
    [element] = parse_xfcc(f"bY=x;HASH=ab;cert={url_encode(LEAF.pem)};uRi=u;dns=d;SUBJECT=s")
    assert element == XfccElement(by=("x",), hash="ab", cert=LEAF.pem, subject="s",
                                  uri=("u",), dns=("d",))


def test_cert_is_percent_decoded_without_plus_to_space() -> None:
    leaf = LEAF
    while "+" not in leaf.pem:  # base64 almost always has a '+'; make sure of it
        leaf = CA.issue(now=NOW)
    encoded = quote(leaf.pem, safe="+")  # a raw '+' must stay '+', not become a space
    [element] = parse_xfcc(f"Cert={encoded}")
    assert element.cert == leaf.pem


def test_whitespace_around_elements_and_pairs_is_ignored() -> None:
    a, b = parse_xfcc(" By=a ; URI=u1 ,  By=b;URI=u2 ")
    assert (a.by, a.uri, b.by, b.uri) == (("a",), ("u1",), ("b",), ("u2",))


def test_empty_values_are_absent() -> None:
    [element] = parse_xfcc('By=x;URI=;Subject="";DNS=')
    assert element == XfccElement(by=("x",))


def test_many_elements_keep_order() -> None:
    header = ",".join(f"By=hop{i}" for i in range(10))
    assert [e.by[0] for e in parse_xfcc(header)] == [f"hop{i}" for i in range(10)]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("By", "malformed pair"),
        ("By=a;", "expected key=value"),
        ("By=a,", "expected key=value"),
        (",By=a", "expected key=value"),
        ("By=a,,By=b", "expected key=value"),
        ("By=a;;URI=b", "expected key=value"),
        ('Subject="unterminated', "double quote"),
        ('Subject="a"b', "double quote"),
        ('Subject=a"b"', "double quote"),
        ("URI=a=b", "malformed pair"),
        ("Foo=bar", "unknown key"),
        ("Hash=a;Hash=b", "duplicate key"),
        ("Cert=not-a-pem", "not a URL-encoded PEM"),
        ("Cert=%ff%fe", "not URL-encoded UTF-8"),
        ("Chain=abc", "not a URL-encoded PEM"),
    ],
)
def test_malformed_headers_are_refused_clearly(header: str, message: str) -> None:
    with pytest.raises(XfccError, match=message):
        parse_xfcc(header)


def test_error_messages_never_echo_the_header() -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    with pytest.raises(XfccError) as info:
        parse_xfcc(f'By={secret};Subject="{secret}')
    assert secret not in str(info.value)


def test_size_limits() -> None:
    with pytest.raises(XfccError, match="longer than"):
        parse_xfcc("By=" + "a" * MAX_XFCC_LENGTH)
    with pytest.raises(XfccError, match="more than"):
        parse_xfcc(",".join(["By=a"] * (MAX_ELEMENTS + 1)))
    assert len(parse_xfcc(",".join(["By=a"] * MAX_ELEMENTS))) == MAX_ELEMENTS


@pytest.mark.parametrize(
    "header",
    [
        "By=a" + " " * 100_000 + "=",
        "By=" + " " * 100_000 + '"',
        'Subject="' + "\\x" * 50_000,
        "By" + " " * 100_000,
        "By=a;" * 20_000,
    ],
)
def test_pathological_input_is_linear_time(header: str) -> None:
    start = time.perf_counter()
    with contextlib.suppress(XfccError):
        parse_xfcc(header[:MAX_XFCC_LENGTH])
    assert time.perf_counter() - start < 1.0


# -- properties --------------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30
)
_elements = st.builds(
    XfccElement,
    by=st.lists(_text, max_size=2).map(tuple),
    hash=st.none() | st.text("0123456789abcdef", min_size=1, max_size=64),
    cert=st.none() | st.just(LEAF.pem),
    chain=st.none() | st.just(LEAF.pem + CA.pem),
    subject=st.none() | _text,
    uri=st.lists(_text, max_size=2).map(tuple),
    dns=st.lists(_text, max_size=3).map(tuple),
).filter(lambda e: any([e.by, e.hash, e.cert, e.chain, e.subject, e.uri, e.dns]))


@given(st.lists(_elements, min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_format_then_parse_round_trips(elements: list[XfccElement]) -> None:
    # Unquoted values are stripped: the formatter quotes values with surrounding whitespace.
    assert parse_xfcc(format_xfcc(elements)) == elements


@given(st.text(max_size=300))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_text_parses_or_raises_xfcc_error(header: str) -> None:
    with contextlib.suppress(XfccError):
        parse_xfcc(header)


_fragments = st.sampled_from(
    ["By", "Hash", "Cert", "URI", "DNS", "Subject", "=", ";", ",", '"', '\\"', "\\", " ",
     "%2", "%41", "a", "-----BEGIN CERTIFICATE-----", "\t", "\n", "é"]
)


@given(st.lists(_fragments, max_size=40).map("".join))
@settings(max_examples=2000, deadline=None)
def test_grammar_shaped_noise_parses_or_raises_xfcc_error(header: str) -> None:
    with contextlib.suppress(XfccError):
        parse_xfcc(header)
