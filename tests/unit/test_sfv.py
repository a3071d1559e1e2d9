"""RFC 8941 structured fields: examples from the RFC, edge cases, and property tests."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz import sfv
from extauthz.sfv import InnerList, Item, Token


def typed(value: Any) -> Any:
    """A comparable form that keeps the types apart (True != 1, Token != String, int != Decimal)."""
    if isinstance(value, Item):
        return ("item", typed(value.value), typed(value.params))
    if isinstance(value, InnerList):
        return ("inner", [typed(i) for i in value.items], typed(value.params))
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


# ------------------------------------------------------------------------------ examples (RFC)


def test_rfc_list_of_tokens() -> None:
    assert sfv.parse_list("sugar, tea, rum") == [Item(Token("sugar")), Item(Token("tea")),
                                                  Item(Token("rum"))]


def test_rfc_inner_lists() -> None:
    parsed = sfv.parse_list('("foo" "bar"), ("baz"), ("bat" "one"), ()')
    assert [len(m.items) for m in parsed if isinstance(m, InnerList)] == [2, 1, 2, 0]
    assert sfv.serialize_list(parsed) == '("foo" "bar"), ("baz"), ("bat" "one"), ()'


def test_rfc_parameters() -> None:
    parsed = sfv.parse_list('abc;a=1;b=2; cde_456, (ghi;jk=4 l);q="9";r=w')
    first = parsed[0]
    assert isinstance(first, Item)
    assert first.params == {"a": 1, "b": 2, "cde_456": True}
    second = parsed[1]
    assert isinstance(second, InnerList)
    assert second.params == {"q": "9", "r": Token("w")}
    assert sfv.serialize_list(parsed) == 'abc;a=1;b=2;cde_456, (ghi;jk=4 l);q="9";r=w'


def test_rfc_dictionary() -> None:
    parsed = sfv.parse_dictionary('en="Applepie", da=:w4ZibGV0w6ZydGU=:')
    assert typed(parsed) == typed({"en": Item("Applepie"), "da": Item("Æbletærte".encode())})
    parsed = sfv.parse_dictionary("a=?0, b, c; foo=bar")
    assert parsed["b"] == Item(True) and parsed["a"] == Item(False)
    assert parsed["c"] == Item(True, {"foo": Token("bar")})
    assert sfv.serialize_dictionary(parsed) == "a=?0, b, c;foo=bar"


def test_rfc_dictionary_with_inner_list() -> None:
    parsed = sfv.parse_dictionary("rating=1.5, feelings=(joy sadness)")
    assert parsed["rating"] == Item(Decimal("1.5"))
    assert sfv.serialize_dictionary(parsed) == "rating=1.5, feelings=(joy sadness)"


def test_signature_input_from_rfc9421() -> None:
    value = (
        'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
    )
    parsed = sfv.parse_dictionary(value)
    inner = parsed["sig-b25"]
    assert isinstance(inner, InnerList)
    assert [i.value for i in inner.items] == ["date", "@authority", "content-type"]
    assert inner.params == {"created": 1618884473, "keyid": "test-shared-secret"}
    assert sfv.serialize_dictionary(parsed) == value


def test_duplicate_dictionary_key_overwrites_in_place() -> None:
    parsed = sfv.parse_dictionary("a=1, b=2, a=3")
    assert list(parsed) == ["a", "b"] and parsed["a"] == Item(3)


def test_ows_around_commas_and_trailing_space() -> None:
    assert sfv.parse_list("a ,\tb  ") == [Item(Token("a")), Item(Token("b"))]
    assert sfv.parse_dictionary("") == {}
    assert sfv.parse_list("   ") == []


def test_numbers() -> None:
    assert sfv.parse_item("-999999999999999").value == -999_999_999_999_999
    assert sfv.parse_item("999999999999.999").value == Decimal("999999999999.999")
    assert sfv.serialize_bare_item(Decimal("1.5000")) == "1.5"
    assert sfv.serialize_bare_item(Decimal("2")) == "2.0"
    assert sfv.serialize_bare_item(Decimal("0.0005")) == "0.0"  # round half even
    assert sfv.serialize_bare_item(Decimal("0.0015")) == "0.002"
    assert sfv.serialize_bare_item(Decimal("-0.0")) == "0.0"


def test_strings_tokens_bytes_booleans() -> None:
    assert sfv.parse_item(r'"a \"q\" \\ b"').value == 'a "q" \\ b'
    assert sfv.serialize_bare_item('a "q" \\ b') == r'"a \"q\" \\ b"'
    token = sfv.parse_item("*/*").value
    assert isinstance(token, Token) and token == "*/*"
    assert sfv.parse_item("text/html;q=1.0").params == {"q": Decimal("1.0")}
    assert sfv.parse_item(":aGVsbG8=:").value == b"hello"
    assert sfv.parse_item(":aGVsbG8:").value == b"hello"  # padding optional when parsing
    assert sfv.serialize_bare_item(b"hello") == ":aGVsbG8=:"
    assert sfv.parse_item("?1").value is True
    assert sfv.parse_item("?0").value is False


@pytest.mark.parametrize(
    "text",
    [
        "1234567890123456",  # 16-digit integer
        "1234567890123.1",  # 13-digit integer part
        "1.1234",  # 4 fractional digits
        "1.",  # no fractional digit
        "-",
        "--1",
        '"unterminated',
        '"bad \\n escape"',
        '"tab\tinside"',
        ":not base64!:",
        ":aGVsbG8=",  # unterminated
        "?2",
        "?",
        "é",  # non-ASCII
        "a b",  # two items
        "@1659578233",  # RFC 9651 date: not RFC 8941
        '%"display"',
        "(a b",  # unterminated inner list
        "(a,b)",
        "a;",  # parameter without key
        "a;A=1",  # uppercase parameter key
        "",  # an item cannot be empty
    ],
)
def test_invalid_items(text: str) -> None:
    with pytest.raises(sfv.ParseError):
        sfv.parse_item(text)


@pytest.mark.parametrize(
    "text", ["a=1,", "a=1,,b=2", "A=1", "a=1 b=2", "a=(1 2", ",a", "a=1;", "1=a", "a=é"]
)
def test_invalid_dictionaries(text: str) -> None:
    with pytest.raises(sfv.ParseError):
        sfv.parse_dictionary(text)


@pytest.mark.parametrize("text", ["a,", "a,,b", "(a)(b)", "a b"])
def test_invalid_lists(text: str) -> None:
    with pytest.raises(sfv.ParseError):
        sfv.parse_list(text)


@pytest.mark.parametrize(
    "value",
    [10**15, -(10**15), Decimal("1000000000000"), Decimal("NaN"), "é", "new\nline", Token("1a"),
     Token("a b"), 1.5],
)
def test_unserializable(value: Any) -> None:
    with pytest.raises(sfv.SerializeError):
        sfv.serialize_bare_item(value)


def test_invalid_key_is_not_serialized() -> None:
    with pytest.raises(sfv.SerializeError):
        sfv.serialize_dictionary({"Bad": Item(1)})


# ------------------------------------------------------------------------------ properties

_keys = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True)
_bare = st.one_of(
    st.integers(-999_999_999_999_999, 999_999_999_999_999),
    st.decimals(min_value=Decimal("-999999999999.999"), max_value=Decimal("999999999999.999"),
                places=3, allow_nan=False, allow_infinity=False),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.from_regex(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,10}", fullmatch=True).map(Token),
    st.binary(max_size=24),
    st.booleans(),
)
_params = st.dictionaries(_keys, _bare, max_size=3)
_items = st.builds(Item, _bare, _params)
_inner = st.builds(InnerList, st.lists(_items, max_size=4), _params)
_members = st.one_of(_items, _inner)


def _normal(value: Any) -> Any:
    """What a round trip yields: decimals are canonical (trailing zeros are not kept)."""
    if isinstance(value, Decimal):
        return ("Decimal", value.normalize() if value != 0 else Decimal(0))
    if isinstance(value, Item):
        return ("item", _normal(value.value), _normal(value.params))
    if isinstance(value, InnerList):
        return ("inner", [_normal(i) for i in value.items], _normal(value.params))
    if isinstance(value, dict):
        return [(k, _normal(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return (type(value).__name__, value)


@given(st.dictionaries(_keys, _members, max_size=5))
def test_dictionary_round_trip(members: dict[str, Any]) -> None:
    text = sfv.serialize_dictionary(members)
    assert _normal(sfv.parse_dictionary(text)) == _normal(members)


@given(st.lists(_members, max_size=5))
def test_list_round_trip(members: list[Any]) -> None:
    text = sfv.serialize_list(members)
    assert _normal(sfv.parse_list(text)) == _normal(members)


@given(_items)
def test_item_round_trip(item: Item) -> None:
    assert _normal(sfv.parse_item(sfv.serialize_item(item))) == _normal(item)


_sfish = st.text(
    st.sampled_from([*'abcAZ*09-_.:/;=,()"\\?@% \t', "é", "\x00", "\n"]), max_size=40
)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=60), _sfish))
def test_parsers_only_raise_parse_error(text: str) -> None:
    """Any input: a value or ParseError, nothing else; a parsed value re-serializes canonically."""
    pairs: list[tuple[Callable[[str], Any], Callable[[Any], str]]] = [
        (sfv.parse_dictionary, sfv.serialize_dictionary),
        (sfv.parse_list, sfv.serialize_list),
        (sfv.parse_item, sfv.serialize_item),
    ]
    for parse, serialize in pairs:
        try:
            parsed = parse(text)
        except sfv.ParseError:
            continue
        canonical = serialize(parsed)
        assert serialize(parse(canonical)) == canonical
