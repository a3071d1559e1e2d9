"""extauthz.hygiene: every spelling of a reserved name, every encoding of a credential name."""

from __future__ import annotations

import re

import pytest

from extauthz.hygiene import (
    ReservedHeaders,
    canonical_header,
    canonical_names,
    canonical_param,
    header_spellings,
    identity_value_safe,
    query_hides,
    query_spellings,
    without_cookies,
)


@pytest.mark.parametrize("name", ["x-auth-subject", "X-Auth-Subject", "x_auth_subject",
                                  "X_AUTH_SUBJECT", "x-auth.subject", "x.auth_subject",
                                  "x-auth_subject"])
def test_every_spelling_of_a_header_reads_the_same(name: str) -> None:
    assert canonical_header(name) == "x-auth-subject"


def test_reserved_headers_cover_the_namespace_and_configured_names() -> None:
    reserved = ReservedHeaders("x-auth-", ["x-tenant-id", "X-User-Email"])
    client = ["x-auth-subject", "x_auth_subject", "x-auth.admin", "x_tenant_id", "x-tenant.id",
              "x-user_email", "x-authority", "x-tenant-ids", "accept", "xauth-subject"]
    assert reserved.spoofed(canonical_names(client), {"x-auth-subject"}) == [
        "x_auth_subject", "x-auth.admin", "x_tenant_id", "x-tenant.id", "x-user_email"]


def test_credential_header_spellings() -> None:
    # names as Envoy sends them (lower case; Headers lowercases any other source)
    names = ["x-api-key", "x_api_key", "x.api.key", "x-api-keys", "authorization"]
    client = canonical_names(names)
    assert header_spellings(client, ["X-Api-Key"]) == ["x-api-key", "x_api_key", "x.api.key"]
    assert header_spellings(client, []) == []


@pytest.mark.parametrize("name", ["api_key", "api%5Fkey", "api%5fkey", "API_KEY", "api.key",
                                  "api+key", "api%20key", "api[key", "%61pi_key", "Api.Key"])
def test_every_encoding_of_a_parameter_name_reads_the_same(name: str) -> None:
    assert canonical_param(name) == "api_key"


def test_query_spellings_lists_raw_and_decoded_forms() -> None:
    raw = "page=2&api%5Fkey=k&API.KEY=x&api_key=y&other=api_key&api_keys=z"
    assert query_spellings(raw, ["api_key"]) == ["api%5Fkey", "api_key", "API.KEY"]
    assert query_spellings("", ["api_key"], ["api_key"]) == ["api_key"]
    assert query_spellings(raw, []) == []


def test_without_cookies() -> None:
    assert without_cookies("theme=dark; api_key=k; lang=en", ["api_key"]) == "theme=dark; lang=en"
    assert without_cookies("api_key=k", ["api_key"]) == ""
    assert without_cookies("theme=dark", ["api_key"]) is None
    # every encoding of the name; repeated Cookie headers joined with "," by Envoy (HTTP/1.1)
    assert without_cookies("api%5Fkey=k;API.KEY=k, theme=dark,api_key=k", ["api_key"]) == \
        "theme=dark"


@pytest.mark.parametrize("value", ["alice", "zoë", "zoë@exämple.org", "日本", "a b", "é" * 10,
                                   ""])
def test_representable_identity_values(value: str) -> None:
    assert identity_value_safe(value)


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "a\tb", "a\x7fb", "a\x85b",
                                   "a\x9fb", "a\x1bb", "a\ud800b", "a\udcffb", " a", "a ", " "])
def test_unrepresentable_identity_values(value: str) -> None:
    assert not identity_value_safe(value)


def test_a_credential_hidden_after_a_semicolon_is_found() -> None:
    assert query_hides("page=2;api_key=k", ["api_key"])
    assert query_hides("a=1&page=2; API%5FKEY=k", ["api_key"])
    assert not query_hides("api_key=k;x=1&page=2", ["api_key"])  # Envoy removes this pair
    assert not query_hides("page=2;x=1", ["api_key"])
    assert not query_hides("page=2", ["api_key"])


def test_envoy_regex_covers_every_spelling_of_every_reserved_name() -> None:
    reserved = ReservedHeaders("x-auth-", ["x-tenant-id", "x-auth-email", "X_Org.Id"])
    regex = reserved.envoy_regex()
    assert regex == r"x[-_.]auth[-_.].*|x[-_.]org[-_.]id|x[-_.]tenant[-_.]id"
    for name in ("x-auth-a", "x_auth.b", "x-tenant-id", "x_tenant.id", "x.org_id"):
        assert re.fullmatch(regex, name), name
    for name in ("x-authority", "x-tenant-ids", "xtenant-id", "accept"):
        assert not re.fullmatch(regex, name), name


# -- remembered per set of names (issue 16: computed once per client, bounded) -----------------


def test_canonical_names_are_remembered_per_set_of_names_and_bounded() -> None:
    from extauthz import hygiene

    names = ["host", "x_auth_subject", "x-api.key"]
    first = canonical_names(names)
    assert first == (("host", "host"), ("x_auth_subject", "x-auth-subject"),
                     ("x-api.key", "x-api-key"))
    assert canonical_names(list(names)) is first  # the same answer, not computed again
    for i in range(hygiene._MAX_REMEMBERED + 10):  # a client inventing names
        canonical_names([f"x-new-{i}"])
    assert len(hygiene._CANONICAL) <= hygiene._MAX_REMEMBERED
    huge = ["x" * 3000]  # longer than worth remembering: computed, not kept
    assert canonical_names(huge) == (("x" * 3000, "x" * 3000),)
    assert tuple(huge) not in hygiene._CANONICAL


def test_spoofed_gives_the_same_answer_remembered_or_not() -> None:
    reserved = ReservedHeaders("x-auth-", ["x-tenant-id"])
    client = canonical_names(["x_auth_subject", "x-tenant.id", "accept", "x-auth-method"])
    expected = ["x_auth_subject", "x-tenant.id", "x-auth-method"]
    assert reserved.spoofed(client, set()) == expected
    assert reserved.spoofed(client, set()) == expected  # remembered
    assert reserved.spoofed(client, {"x-auth-method"}) == expected[:2]  # keep applies each time
    assert reserved.spoofed(list(client), set()) == expected  # not a tuple: not remembered


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("value", ["alice", "", " alice", "alice ", "a b", "a\tb", "a\x7f",
                                   "a\x00b", "~!@#$%^&*()", "a\nb", "\x1b[31m", "caf\u00e9",
                                   "a\u0085b", "\ud800", "a\u00a0"])
def test_identity_value_safe_is_the_same_with_and_without_the_ascii_shortcut(value: str) -> None:
    """The printable-ASCII shortcut answers exactly what the full rule (regex, spaces, UTF-8)
    answers."""
    try:
        value.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    full = (_CONTROL_RE.search(value) is None and value[:1] != " " and value[-1:] != " "
            and encodable)
    assert identity_value_safe(value) is full
