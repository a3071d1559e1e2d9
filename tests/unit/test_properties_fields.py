"""Properties of the structured-field parsers (RFC 8941), the digest headers (RFC 9530
``Content-Digest`` and the legacy ``Digest``) and htpasswd files.

Invariants: ``sfv.parse_*`` raise only ``sfv.ParseError`` and what they accept re-serializes to a
fixed point; digest parsing/verification raises only ``DigestError`` and accepts exactly the
digests of the body; ``parse_htpasswd`` raises only ``ValueError`` naming a line, and a file it
writes itself round-trips.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from extauthz import sfv
from extauthz.authn.digest import (
    DigestError,
    content_digest,
    legacy_digest,
    parse_content_digest,
    parse_legacy_digest,
    verify_content_digest,
    verify_legacy_digest,
)
from extauthz.authn.htpasswd import parse_htpasswd
from tests.support.hypo import budget

# Grammar-shaped noise: the characters every structured-field production reacts to.
_SF_PIECES = ["a", "z", "*", "0", "9", "-", ".", ":", "/", "=", ";", ",", "(", ")", '"', "\\",
              "?", "?1", "?0", " ", "\t", "sha-256", ":YQ==:", ":YQ:", ":@@:", "1.5", "-0",
              "1234567890123456", "1.2345", "é", "\x7f", "%", "@", "key", "Tok"]
sf_text = st.one_of(st.lists(st.sampled_from(_SF_PIECES), max_size=30).map("".join),
                    st.text(max_size=60))


@budget(500)
@given(sf_text)
def test_structured_field_parsers_raise_only_parse_error(text: str) -> None:
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
        canonical = serialize(parsed)  # anything parsed can be serialized
        assert serialize(parse(canonical)) == canonical


# -- digests -------------------------------------------------------------------------------------


_DIGEST_PIECES = ["sha-256", "SHA-256", "sha-512", "md5", "=", ":", ",", " ", ";", "YQ==",
                  "abc", "=:", "?1", '"x"', "\x00", "é", "+", "/"]
digest_text = st.one_of(st.lists(st.sampled_from(_DIGEST_PIECES), max_size=16).map("".join),
                        st.text(max_size=60))


@budget(300)
@given(digest_text, st.binary(max_size=32))
def test_digest_headers_raise_only_digest_error(value: str, body: bytes) -> None:
    for parse in (parse_content_digest, parse_legacy_digest):
        try:
            out = parse(value)
        except DigestError:
            continue
        assert all(isinstance(v, bytes) for v in out.values())
    for verify in (verify_content_digest, verify_legacy_digest):
        try:
            algorithm = verify(value, body)
        except DigestError:
            continue
        assert algorithm in ("sha-256", "sha-512")


@budget(200)
@given(st.binary(max_size=200), st.binary(max_size=200),
       st.sampled_from(["sha-256", "sha-512"]))
def test_digests_accept_exactly_their_body(body: bytes, other: bytes, algorithm: str) -> None:
    assert verify_content_digest(content_digest(body, algorithm), body) == algorithm
    assert verify_legacy_digest(legacy_digest(body, algorithm), body) == algorithm
    if other != body:
        for verify, make in ((verify_content_digest, content_digest),
                             (verify_legacy_digest, legacy_digest)):
            try:
                verify(make(body, algorithm), other)
            except DigestError:
                continue
            raise AssertionError("a digest of another body was accepted")


# -- htpasswd ------------------------------------------------------------------------------------


_HT_PIECES = ["alice", "bob", ":", "\n", "\r\n", "#", " ", "\t", "{SHA}", "$2y$", "$2b$10$",
              "$apr1$", "$1$", "$5$", "=", "a" * 27, "./" * 26 + "A", "\x00", "é", "04$", "99$"]
htpasswd_text = st.one_of(st.lists(st.sampled_from(_HT_PIECES), max_size=20).map("".join),
                          st.text(max_size=120))


@budget(400)
@given(htpasswd_text)
def test_htpasswd_raises_only_value_error_naming_a_line(text: str) -> None:
    try:
        users = parse_htpasswd(text)
    except ValueError as exc:
        assert str(exc).startswith("line "), exc
        return
    for user, entry in users.items():
        assert user == entry.user and user and ":" not in user


_users = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(
    lambda c: c not in ":#"), min_size=1, max_size=12)


@budget(200)
@given(st.dictionaries(_users, st.text(max_size=20), min_size=1, max_size=5))
def test_sha_htpasswd_round_trips(passwords: dict[str, str]) -> None:
    lines = [f"{user}:{{SHA}}"
             + base64.b64encode(hashlib.sha1(pw.encode()).digest()).decode()
             for user, pw in passwords.items()]
    users = parse_htpasswd("\n".join(lines))
    assert set(users) == set(passwords)
    for user, pw in passwords.items():
        assert users[user].verify(pw)
        assert not users[user].verify(pw + "x")
