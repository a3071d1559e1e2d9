"""Rate-limit keys (extauthz/ratelimit/keys.py): every part, unambiguous joins, bounded size."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from extauthz.ratelimit.keys import MAX_PLAIN_KEY, PARTS, KeyContext, compile_cel_part, render
from extauthz.types import AuthMethod, Headers, Identity, RequestView


def ctx(identity: Identity | None = None, **view: str) -> KeyContext:
    request = RequestView(method=view.get("method", "GET"), host="h", path="/p",
                          headers=Headers({"x-tenant": view.get("tenant", "")}),
                          source_address=view.get("address", ""))
    return KeyContext(request, identity, "orders", view.get("plan", ""),
                      MappingProxyType({"id": "7"}))


ALICE = Identity(method=AuthMethod.API_KEY, subject="alice", authenticator="keys",
                 consumer="acme", key_id="k1", claims={"tenant": "t9"})


@pytest.mark.parametrize(("part", "expected"), [
    ("consumer", "acme"), ("subject", "keys/alice"), ("api_key", "keys/acme/k1"),
    ("client_address", "192.0.2.7"),
    ("route", "orders"), ("method", "POST"), ("plan", "gold"),
])
def test_each_part(part: str, expected: str) -> None:
    c = ctx(ALICE, address="192.0.2.7", method="POST", plan="gold")
    assert PARTS[part](c) == expected
    assert render(((part, PARTS[part]),), c) == f"{part}:{len(expected)}:{expected}"


def test_missing_values_make_the_limit_not_apply() -> None:
    anonymous = ctx(None)
    for part in ("consumer", "subject", "api_key", "client_address", "plan"):
        assert render(((part, PARTS[part]),), anonymous) is None
    no_consumer = Identity(method=AuthMethod.JWT, subject="bob", authenticator="idp")
    assert render((("consumer", PARTS["consumer"]),), ctx(no_consumer)) is None


def test_joined_parts_cannot_be_forged_by_a_value() -> None:
    forged = Identity(method=AuthMethod.JWT, subject="a|route:6:orders", authenticator="idp")
    honest = Identity(method=AuthMethod.JWT, subject="a", authenticator="idp")
    parts = (("subject", PARTS["subject"]), ("route", PARTS["route"]))
    assert render(parts, ctx(forged)) != render(parts, ctx(honest))


def test_long_keys_are_digested() -> None:
    huge = Identity(method=AuthMethod.JWT, subject="s" * 20_000, authenticator="idp")
    key = render((("subject", PARTS["subject"]),), ctx(huge))
    assert key is not None and key.startswith("#") and len(key) <= MAX_PLAIN_KEY


def test_cel_part_reads_identity_and_request() -> None:
    claim = compile_cel_part("identity.claims.tenant")
    header = compile_cel_part('request.headers["x-tenant"] + ":" + params.id')
    assert claim(ctx(ALICE)) == "t9"
    assert header(ctx(ALICE, tenant="t1")) == "t1:7"
    assert header(ctx(None, tenant="")) == ":7"
    # an error (missing claim) or a non-string result: no value
    assert claim(ctx(Identity(method=AuthMethod.JWT, subject="x", authenticator="i"))) == ""
    assert compile_cel_part("dyn(1)")(ctx(ALICE)) == ""


@pytest.mark.parametrize(("source", "message"), [
    ("request.path.size()", "must evaluate to a string"),
    ("nope.x", "undeclared reference"),
])
def test_cel_part_errors(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_cel_part(source)


def test_api_key_part_is_the_clients_credential_only() -> None:
    """Key ids repeat across consumers (and a JWT's key id is the issuer's signing key, shared by
    every user): neither may put two clients in one bucket."""
    part = (("api_key", PARTS["api_key"]),)
    other = Identity(method=AuthMethod.API_KEY, subject="bob", authenticator="keys",
                     consumer="bobco", key_id="k1")
    assert render(part, ctx(ALICE)) != render(part, ctx(other))
    jwt = Identity(method=AuthMethod.JWT, subject="carol", authenticator="idp", key_id="kid-1")
    assert render(part, ctx(jwt)) is None
    hmac = Identity(method=AuthMethod.HMAC, subject="svc", authenticator="sig", key_id="a/b")
    assert PARTS["api_key"](ctx(hmac)) == "sig//a/b"


def test_subjects_of_two_authenticators_are_counted_apart() -> None:
    part = (("subject", PARTS["subject"]),)
    a = Identity(method=AuthMethod.JWT, subject="123", authenticator="issuer-a")
    b = Identity(method=AuthMethod.JWT, subject="123", authenticator="issuer-b")
    assert render(part, ctx(a)) != render(part, ctx(b))
