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
    ("consumer", "acme"), ("subject", "alice"), ("api_key", "k1"), ("client_address", "192.0.2.7"),
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
