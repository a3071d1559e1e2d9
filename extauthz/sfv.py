"""RFC 8941 Structured Field Values: parsing and serialization.

Used by HTTP Message Signatures (``Signature-Input``, ``Signature``, RFC 9421) and Digest Fields
(``Content-Digest``, RFC 9530). The parser follows the algorithms of RFC 8941 §4.2 step by step;
the serializer follows §4.1, so ``serialize(parse(x))`` is the canonical form of ``x``.

Data model::

    Dictionary = dict[str, Item | InnerList]      (ordered; a repeated key overwrites in place)
    List       = list[Item | InnerList]
    Item       = bare item + parameters
    InnerList  = list of Items + parameters
    Parameters = dict[str, BareItem]              (a parameter without value is ``True``)

    bare item   Python type
    ---------   ---------------------------------------------------------------
    Integer     int (never bool), -999_999_999_999_999 .. 999_999_999_999_999
    Decimal     decimal.Decimal (at most 12 integer and 3 fractional digits)
    String      str (printable ASCII)
    Token       Token (a str subclass)
    Byte Seq.   bytes
    Boolean     bool

Errors: every parse failure raises :class:`ParseError` (a ``ValueError``) and nothing else; every
serialization failure raises :class:`SerializeError`. Input must be ASCII (RFC 8941 §4.2: a field
value that is not ASCII fails parsing). Parsing is linear in the input and never recurses, so any
header value is safe to hand to it; callers still bound the header length.

Dates and Display Strings (RFC 9651) are not part of RFC 8941 and fail parsing.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TypeAlias

__all__ = [
    "BareItem",
    "Dictionary",
    "InnerList",
    "Item",
    "List",
    "Member",
    "Params",
    "ParseError",
    "SerializeError",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
    "serialize_bare_item",
    "serialize_dictionary",
    "serialize_inner_list",
    "serialize_item",
    "serialize_list",
    "serialize_member",
    "serialize_params",
]


class ParseError(ValueError):
    """The input is not a valid structured field of the requested type."""


class SerializeError(ValueError):
    """The value cannot be serialized as a structured field (out of range, bad characters...)."""


class Token(str):
    """An RFC 8941 Token (as opposed to a String): ``foo``, ``*/*``, ``text/html``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Token({str.__repr__(self)})"


BareItem: TypeAlias = int | Decimal | str | bytes | bool
Params: TypeAlias = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Item:
    """A bare item with parameters."""

    value: BareItem
    params: Params = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InnerList:
    """A parenthesised list of items, with parameters of its own."""

    items: list[Item] = field(default_factory=list)
    params: Params = field(default_factory=dict)


Member: TypeAlias = Item | InnerList
Dictionary: TypeAlias = dict[str, Member]
List: TypeAlias = list[Member]

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TCHAR = frozenset("!#$%&'*+-.^_`|~") | _DIGITS | _ALPHA
_TOKEN_CHARS = _TCHAR | frozenset(":/")
_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_CHARS = _KEY_FIRST | _DIGITS | frozenset("_-.")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*\Z")
_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z")
_MAX_INT = 999_999_999_999_999
_THOUSANDTH = Decimal("0.001")


# ----------------------------------------------------------------------------------------- parsing


class _Parser:
    """One parse over one string; ``pos`` only moves forward."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise ParseError("structured field values must be ASCII")
        self.text = text
        self.pos = 0

    # -- helpers

    def _eof(self) -> bool:
        return self.pos >= len(self.text)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_sp(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] == " ":
            pos += 1
        self.pos = pos

    def _skip_ows(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        self.pos = pos

    def _fail(self, what: str) -> ParseError:
        return ParseError(f"{what} at offset {self.pos}")

    def finish(self) -> None:
        """RFC 8941 §4.2 steps 6-7: only trailing SP may remain."""
        self._skip_sp()
        if not self._eof():
            raise self._fail("unexpected character")

    # -- top-level types (§4.2.1, §4.2.2)

    def parse_list(self) -> List:
        members: List = []
        while not self._eof():
            members.append(self.parse_item_or_inner_list())
            self._skip_ows()
            if self._eof():
                return members
            if self._peek() != ",":
                raise self._fail("expected ','")
            self.pos += 1
            self._skip_ows()
            if self._eof():
                raise self._fail("trailing ','")
        return members

    def parse_dictionary(self) -> Dictionary:
        members: Dictionary = {}
        while not self._eof():
            key = self.parse_key()
            member: Member
            if self._peek() == "=":
                self.pos += 1
                member = self.parse_item_or_inner_list()
            else:
                member = Item(True, self.parse_params())
            members[key] = member
            self._skip_ows()
            if self._eof():
                return members
            if self._peek() != ",":
                raise self._fail("expected ','")
            self.pos += 1
            self._skip_ows()
            if self._eof():
                raise self._fail("trailing ','")
        return members

    def parse_item_or_inner_list(self) -> Member:
        if self._peek() == "(":
            return self.parse_inner_list()
        return self.parse_item()

    # -- inner lists and items (§4.2.1.2, §4.2.3)

    def parse_inner_list(self) -> InnerList:
        if self._peek() != "(":
            raise self._fail("expected '('")
        self.pos += 1
        items: list[Item] = []
        while not self._eof():
            self._skip_sp()
            if self._peek() == ")":
                self.pos += 1
                return InnerList(items, self.parse_params())
            items.append(self.parse_item())
            if self._peek() not in (" ", ")"):
                raise self._fail("expected ' ' or ')' in inner list")
        raise self._fail("unterminated inner list")

    def parse_item(self) -> Item:
        value = self.parse_bare_item()
        return Item(value, self.parse_params())

    def parse_bare_item(self) -> BareItem:
        ch = self._peek()
        if ch == "-" or ch in _DIGITS:
            return self.parse_number()
        if ch == '"':
            return self.parse_string()
        if ch == "*" or ch in _ALPHA:
            return self.parse_token()
        if ch == ":":
            return self.parse_byte_sequence()
        if ch == "?":
            return self.parse_boolean()
        raise self._fail("unexpected start of bare item")

    def parse_params(self) -> Params:
        params: Params = {}
        while self._peek() == ";":
            self.pos += 1
            self._skip_sp()
            key = self.parse_key()
            value: BareItem = True
            if self._peek() == "=":
                self.pos += 1
                value = self.parse_bare_item()
            params[key] = value
        return params

    def parse_key(self) -> str:
        start = self.pos
        if self._peek() not in _KEY_FIRST or self._eof():
            raise self._fail("expected a key")
        text, pos = self.text, self.pos + 1
        while pos < len(text) and text[pos] in _KEY_CHARS:
            pos += 1
        self.pos = pos
        return text[start:pos]

    # -- bare items (§4.2.4 - §4.2.8)

    def parse_number(self) -> int | Decimal:
        sign = 1
        if self._peek() == "-":
            self.pos += 1
            sign = -1
        if self._eof() or self._peek() not in _DIGITS:
            raise self._fail("expected a digit")
        text = self.text
        start = self.pos
        pos = start
        is_decimal = False
        while pos < len(text):
            ch = text[pos]
            if ch in _DIGITS:
                pos += 1
            elif ch == "." and not is_decimal:
                if pos - start > 12:
                    raise self._fail("decimal integer part too long")
                is_decimal = True
                pos += 1
            else:
                break
            length = pos - start
            if not is_decimal and length > 15:
                raise self._fail("integer too long")
            if is_decimal and length > 16:
                raise self._fail("decimal too long")
        self.pos = pos
        number = text[start:pos]
        if not is_decimal:
            return sign * int(number)
        if number.endswith("."):
            raise self._fail("decimal without fractional digits")
        if len(number) - number.index(".") - 1 > 3:
            raise self._fail("decimal with more than 3 fractional digits")
        value = Decimal(number)
        return -value if sign < 0 else value

    def parse_string(self) -> str:
        self.pos += 1  # opening DQUOTE
        text = self.text
        out: list[str] = []
        pos = self.pos
        while pos < len(text):
            ch = text[pos]
            pos += 1
            if ch == "\\":
                if pos >= len(text):
                    raise self._fail("unterminated escape")
                nxt = text[pos]
                pos += 1
                if nxt not in ('"', "\\"):
                    raise self._fail("invalid escape")
                out.append(nxt)
            elif ch == '"':
                self.pos = pos
                return "".join(out)
            elif " " <= ch <= "~":
                out.append(ch)
            else:
                raise self._fail("invalid character in string")
        self.pos = pos
        raise self._fail("unterminated string")

    def parse_token(self) -> Token:
        text, start = self.text, self.pos
        pos = start + 1
        while pos < len(text) and text[pos] in _TOKEN_CHARS:
            pos += 1
        self.pos = pos
        return Token(text[start:pos])

    def parse_byte_sequence(self) -> bytes:
        self.pos += 1  # opening ':'
        end = self.text.find(":", self.pos)
        if end == -1:
            raise self._fail("unterminated byte sequence")
        content = self.text[self.pos : end]
        if any(ch not in _B64_CHARS for ch in content):
            raise self._fail("invalid character in byte sequence")
        self.pos = end + 1
        # RFC 8941 §4.2.7: parsers SHOULD NOT fail when "=" padding is absent.
        padded = content + "=" * (-len(content) % 4)
        try:
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise self._fail("invalid base64 in byte sequence") from None

    def parse_boolean(self) -> bool:
        self.pos += 1  # '?'
        ch = self._peek()
        if ch == "1":
            self.pos += 1
            return True
        if ch == "0":
            self.pos += 1
            return False
        raise self._fail("invalid boolean")


def parse_dictionary(text: str) -> Dictionary:
    """Parse a Dictionary field value (an empty value is an empty dictionary)."""
    parser = _Parser(text)
    parser._skip_sp()
    result = parser.parse_dictionary()
    parser.finish()
    return result


def parse_list(text: str) -> List:
    """Parse a List field value (an empty value is an empty list)."""
    parser = _Parser(text)
    parser._skip_sp()
    result = parser.parse_list()
    parser.finish()
    return result


def parse_item(text: str) -> Item:
    """Parse an Item field value."""
    parser = _Parser(text)
    parser._skip_sp()
    result = parser.parse_item()
    parser.finish()
    return result


# ----------------------------------------------------------------------------------- serialization


def serialize_bare_item(value: BareItem) -> str:
    """Serialize one bare item (RFC 8941 §4.1.3.1)."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            raise SerializeError("integer out of range")
        return str(value)
    if isinstance(value, Decimal):
        return _serialize_decimal(value)
    if isinstance(value, Token):
        if not _TOKEN_RE.match(value):
            raise SerializeError("invalid token")
        return str(value)
    if isinstance(value, str):
        if any(not " " <= ch <= "~" for ch in value):
            raise SerializeError("string contains a non-printable or non-ASCII character")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    raise SerializeError(f"not a bare item: {type(value).__name__}")


def _serialize_decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise SerializeError("decimal must be finite")
    try:
        rounded = value.quantize(_THOUSANDTH, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        raise SerializeError("decimal out of range") from None
    sign = "-" if rounded < 0 else ""
    integer, _, fraction = format(abs(rounded), "f").partition(".")
    if len(integer) > 12:
        raise SerializeError("decimal integer part has more than 12 digits")
    fraction = fraction.rstrip("0") or "0"
    return f"{sign}{integer}.{fraction}"


def _serialize_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise SerializeError(f"invalid key {key!r}")
    return key


def serialize_params(params: Params) -> str:
    """Serialize parameters (RFC 8941 §4.1.1.2); a ``True`` value is written as the bare key."""
    out: list[str] = []
    for key, value in params.items():
        out.append(";" + _serialize_key(key))
        if value is not True:
            out.append("=" + serialize_bare_item(value))
    return "".join(out)


def serialize_item(item: Item) -> str:
    """Serialize an Item with its parameters."""
    return serialize_bare_item(item.value) + serialize_params(item.params)


def serialize_inner_list(inner: InnerList) -> str:
    """Serialize an Inner List with its parameters."""
    body = " ".join(serialize_item(i) for i in inner.items)
    return f"({body}){serialize_params(inner.params)}"


def serialize_member(member: Member) -> str:
    """Serialize a list or dictionary member (an Item or an Inner List)."""
    if isinstance(member, InnerList):
        return serialize_inner_list(member)
    return serialize_item(member)


def serialize_list(members: List) -> str:
    """Serialize a List."""
    return ", ".join(serialize_member(m) for m in members)


def serialize_dictionary(members: Dictionary) -> str:
    """Serialize a Dictionary; a member whose value is ``True`` is written as ``key;params``."""
    out: list[str] = []
    for key, member in members.items():
        name = _serialize_key(key)
        if isinstance(member, Item) and member.value is True:
            out.append(name + serialize_params(member.params))
        else:
            out.append(f"{name}={serialize_member(member)}")
    return ", ".join(out)
