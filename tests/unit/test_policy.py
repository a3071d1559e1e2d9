"""Route policy rules: scopes (all/any), consumers, subjects; first failure denies."""

from __future__ import annotations

import pytest

from extauthz.authz.policy import Policy
from extauthz.config.schema import AuthzSpec
from extauthz.errors import AuthorizationError, Reason
from extauthz.types import AuthMethod, Identity
from tests.support.builders import make_view


def ident(scopes: set[str], consumer: str | None = "alice", subject: str = "alice") -> Identity:
    return Identity(method=AuthMethod.JWT, subject=subject, authenticator="a",
                    consumer=consumer, scopes=frozenset(scopes))


def test_empty_policy_allows() -> None:
    policy = Policy.from_spec(AuthzSpec())
    assert policy.empty
    policy.evaluate(make_view(), ident(set()), {})


def test_scopes_all() -> None:
    policy = Policy.from_spec(AuthzSpec(scopes_all=["a", "b"]))
    policy.evaluate(make_view(), ident({"a", "b", "c"}), {})
    with pytest.raises(AuthorizationError) as info:
        policy.evaluate(make_view(), ident({"a"}), {})
    assert info.value.reason is Reason.INSUFFICIENT_SCOPE and info.value.scope == "a b"


def test_scopes_any() -> None:
    policy = Policy.from_spec(AuthzSpec(scopes_any=["a", "b"]))
    policy.evaluate(make_view(), ident({"b"}), {})
    with pytest.raises(AuthorizationError) as info:
        policy.evaluate(make_view(), ident({"c"}), {})
    assert info.value.reason is Reason.INSUFFICIENT_SCOPE


def test_consumers_and_subjects() -> None:
    policy = Policy.from_spec(AuthzSpec(consumers=["alice"], subjects=["alice"]))
    policy.evaluate(make_view(), ident(set()), {})
    with pytest.raises(AuthorizationError) as info:
        policy.evaluate(make_view(), ident(set(), consumer="bob"), {})
    assert info.value.reason is Reason.CONSUMER_NOT_ALLOWED
    with pytest.raises(AuthorizationError) as info:
        policy.evaluate(make_view(), ident(set(), consumer=None), {})
    assert info.value.reason is Reason.CONSUMER_NOT_ALLOWED
    with pytest.raises(AuthorizationError) as info:
        policy.evaluate(make_view(), ident(set(), subject="mallory"), {})
    assert info.value.reason is Reason.FORBIDDEN
