"""htpasswd parsing: bcrypt and {SHA} accepted, every other format refused by line number."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest

from extauthz.authn.htpasswd import (
    check_bcrypt,
    dummy_bcrypt_hash,
    load_htpasswd,
    parse_htpasswd,
)

ALICE = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode()
SHA_BOB = "{SHA}" + base64.b64encode(hashlib.sha1(b"bob-pw").digest()).decode()


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_bcrypt_variants(prefix: str) -> None:
    hashed = prefix + ALICE[4:]
    users = parse_htpasswd(f"alice:{hashed}\n")
    entry = users["alice"]
    assert entry.scheme == "bcrypt" and entry.cost == 4 and entry.line == 1
    assert entry.verify("alice-pw")
    assert not entry.verify("alice-pw ")
    assert not entry.verify("")


def test_sha_entries_match_envoy_basic_auth_format() -> None:
    entry = parse_htpasswd(f"bob:{SHA_BOB}")["bob"]
    assert entry.scheme == "sha1"
    assert entry.verify("bob-pw")
    assert not entry.verify("bob-pW")


def test_comments_blank_lines_crlf_and_non_ascii_users() -> None:
    text = f"# users\r\n\r\nalice:{ALICE}\r\n  \nrené:{SHA_BOB}\n"
    users = parse_htpasswd(text)
    assert sorted(users) == ["alice", "rené"]
    assert users["rené"].line == 5


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("carol:secret-plaintext", "plaintext"),
        ("carol:abJnggxhB/yWI", "DES crypt"),
        ("carol:$apr1$abcdefgh$0123456789012345678901", "apr1"),
        ("carol:$1$abcdefgh$0123456789012345678901", "MD5-crypt"),
        ("carol:$5$rounds=5000$salt$hash", "SHA-crypt"),
        ("carol:$6$salt$hash", "SHA-crypt"),
        ("carol:$2y$10$tooshort", "malformed bcrypt"),
        ("carol:{SHA}notbase64", "malformed {SHA}"),
        ("carol:$argon2id$v=19$m=65536", "unknown crypt"),
    ],
)
def test_refused_formats_name_the_line_not_the_hash(line: str, what: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_htpasswd(f"alice:{ALICE}\n# comment\n{line}\n")
    message = str(info.value)
    assert message.startswith("line 3:")
    assert what in message
    assert line.split(":", 1)[1] not in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"alice:{ALICE}\nalice:{SHA_BOB}\n", "line 2: duplicate user 'alice' (first on line 1)"),
        ("no-colon-here\n", "line 1: expected 'user:hash'"),
        (f":{ALICE}\n", "line 1: empty username"),
        (f"al\x01ice:{ALICE}\n", "line 1: username has control characters"),
        (f"alice:{ALICE}:extra\n", "line 1: unexpected ':'"),
        (f"alice:{ALICE[:4]}03{ALICE[6:]}\n", "line 1: bcrypt cost 3 outside 4-17"),
        (f"alice:{ALICE[:4]}31{ALICE[6:]}\n", "line 1: bcrypt cost 31 outside 4-17"),
    ],
)
def test_structural_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_htpasswd(text)


def test_username_with_colon_is_impossible() -> None:
    # "a:b:<hash>" parses as user "a" with hash "b:<hash>", which is refused.
    with pytest.raises(ValueError, match="line 1"):
        parse_htpasswd(f"a:b:{ALICE}")


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"\xef\xbb\xbf" + f"alice:{ALICE}\n".encode())  # a UTF-8 BOM is fine
    assert list(load_htpasswd(path)) == ["alice"]
    path.write_bytes(b"alice:\xff\n")
    with pytest.raises(ValueError, match=f"{path}: not UTF-8"):
        load_htpasswd(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_htpasswd(tmp_path / "missing")
    path.write_text("bob:plain\n")
    with pytest.raises(ValueError, match=f"{path}: line 1: unsupported"):
        load_htpasswd(path)


def test_entries_never_print_their_hash() -> None:
    entry = parse_htpasswd(f"alice:{ALICE}")["alice"]
    assert ALICE not in repr(entry) and ALICE[7:] not in repr(entry)


def test_long_passwords_are_refused_not_truncated() -> None:
    long_pw = b"p" * 72
    hashed = bcrypt.hashpw(long_pw, bcrypt.gensalt(4))
    assert check_bcrypt(long_pw, hashed)
    assert not check_bcrypt(long_pw + b"anything", hashed)


def test_dummy_hash_uses_the_most_common_cost() -> None:
    h5 = bcrypt.hashpw(b"x", bcrypt.gensalt(5)).decode()
    h4 = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    users = parse_htpasswd(f"a:{h5}\nb:{h4}\nc:{h4}\nd:{SHA_BOB}\n")
    dummy = dummy_bcrypt_hash(users)
    assert dummy is not None and dummy.startswith(b"$2b$04$")
    assert dummy_bcrypt_hash(parse_htpasswd(f"d:{SHA_BOB}")) is None
