"""RFC 9530 Content-Digest and legacy Digest verification."""

from __future__ import annotations

import pytest

from extauthz.authn.digest import (
    BodyNotForwarded,
    BodyTruncated,
    DigestError,
    complete_body,
    content_digest,
    is_partial_body,
    legacy_digest,
    parse_content_digest,
    verify_content_digest,
    verify_legacy_digest,
)

BODY = b'{"hello": "world"}'
# RFC 9530 / RFC 9421 examples for the body {"hello": "world"}
SHA256 = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
SHA512 = ("sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEm"
          "THWXvJwew==:")


def test_rfc_examples_verify() -> None:
    assert verify_content_digest(SHA256, BODY) == "sha-256"
    assert verify_content_digest(SHA512, BODY) == "sha-512"
    assert verify_content_digest(f"{SHA256}, {SHA512}", BODY) == "sha-256"


def test_generated_headers_round_trip() -> None:
    assert content_digest(BODY) == SHA256
    assert content_digest(BODY, "sha-512") == SHA512
    assert verify_legacy_digest(legacy_digest(BODY), BODY) == "sha-256"
    assert legacy_digest(BODY).startswith("SHA-256=X48E9q")


def test_tampered_body_is_refused() -> None:
    with pytest.raises(DigestError, match="mismatch"):
        verify_content_digest(SHA256, BODY + b" ")


def test_every_accepted_algorithm_must_match() -> None:
    wrong512 = content_digest(b"other", "sha-512")
    with pytest.raises(DigestError, match="mismatch"):
        verify_content_digest(f"{SHA256}, {wrong512}", BODY)


def test_unknown_algorithms_are_ignored_but_one_accepted_is_needed() -> None:
    assert verify_content_digest(f"md5=:AAAA:, {SHA256}", BODY) == "sha-256"
    with pytest.raises(DigestError, match="no accepted"):
        verify_content_digest("md5=:AAAA:, unixsum=:AAAA:", BODY)
    with pytest.raises(DigestError, match="no accepted"):
        verify_content_digest(SHA512, BODY, accepted=("sha-256",))


@pytest.mark.parametrize("value", ["sha-256=abc", "sha-256", "SHA-256=:X48E9q:", "sha-256=(:AA==:)",
                                   "sha-256=:!!:", "x" * 5000])
def test_malformed_content_digest(value: str) -> None:
    with pytest.raises(DigestError):
        parse_content_digest(value)


def test_legacy_digest_forms() -> None:
    b64 = legacy_digest(BODY).partition("=")[2]
    assert verify_legacy_digest(f"sha-256={b64}", BODY) == "sha-256"  # names case-insensitive
    assert verify_legacy_digest(f"MD5=abc, SHA-256={b64}", BODY) == "sha-256"
    with pytest.raises(DigestError, match="mismatch"):
        verify_legacy_digest(legacy_digest(b"x"), BODY)
    with pytest.raises(DigestError, match="malformed"):
        verify_legacy_digest("SHA-256=***", BODY)
    with pytest.raises(DigestError, match="malformed"):
        verify_legacy_digest("SHA-256", BODY)
    with pytest.raises(DigestError, match="no accepted"):
        verify_legacy_digest("MD5=abc", BODY)


def test_partial_body_header() -> None:
    assert is_partial_body({"x-envoy-auth-partial-body": "true"})
    assert is_partial_body({"x-envoy-auth-partial-body": " TRUE "})
    assert not is_partial_body({"x-envoy-auth-partial-body": "false"})
    assert not is_partial_body({})


# -- complete_body: a digest only ever vouches for a body received whole ----------------------

FLAG = "x-envoy-auth-partial-body"


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({FLAG: "false", "content-length": "5"}, b"hello", b"hello"),
        ({FLAG: "false"}, b"hello", b"hello"),  # a chunked body Envoy buffered whole
        ({FLAG: " FALSE ", "content-length": "0"}, b"", b""),
        ({"content-length": "0"}, b"", b""),  # declared empty, nothing to forward
    ],
)
def test_complete_body_when_provably_whole(
    headers: dict[str, str], body: bytes, expected: bytes
) -> None:
    assert complete_body(headers, body) == expected


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({FLAG: "true", "content-length": "70000"}, b"x" * 8192, BodyTruncated),
        ({FLAG: "false", "content-length": "6"}, b"hello", BodyTruncated),
        ({"content-length": "5"}, b"", BodyNotForwarded),  # with_request_body off
        ({}, b"", BodyNotForwarded),  # chunked without buffering leaves no trace
        ({"transfer-encoding": "chunked"}, b"", BodyNotForwarded),
        ({FLAG: "false", "transfer-encoding": "chunked"}, b"abc", BodyNotForwarded),
        ({}, b"abc", BodyNotForwarded),  # bytes without Envoy's flag
        ({FLAG: "maybe"}, b"abc", BodyNotForwarded),
        ({"content-length": "00"}, b"", BodyNotForwarded),
        ({FLAG: "false"}, b"", BodyNotForwarded),  # a client copy of the flag proves nothing
    ],
)
def test_attack_body_not_received_whole_is_refused(
    headers: dict[str, str], body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        complete_body(headers, body)


def test_complete_body_invariant_over_every_framing_combination() -> None:
    """Exhaustive over flag x content-length x transfer-encoding x body: a body is returned only
    when it is provably whole, and then it is exactly the bytes received."""
    import itertools

    flags = [None, "true", "false", "TRUE", " false ", "yes", ""]
    lengths = [None, "0", "3", "4", "00", "+3", "3,3", ""]
    encodings = [None, "chunked", "identity"]
    bodies = [b"", b"abc"]
    for flag, length, te, body in itertools.product(flags, lengths, encodings, bodies):
        headers = {k: v for k, v in ((FLAG, flag), ("content-length", length),
                                     ("transfer-encoding", te)) if v is not None}
        state = flag.strip().lower() if flag is not None else None
        if te is not None or state == "true":
            whole = False
        elif body:
            whole = state == "false" and (length is None or length.strip() == str(len(body)))
        else:
            whole = length is not None and length.strip() == "0"
        try:
            got = complete_body(headers, body)
        except (BodyTruncated, BodyNotForwarded):
            assert not whole, headers
        else:
            assert whole and got == body, headers
