"""The mesh peer in rules and CEL: the ``principal`` rule, CEL ``source.principal`` and
``source.uri_sans`` (of the peer certificate Envoy forwarded)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from extauthz.authz.cel import activation_data, compile_expression, names_used
from extauthz.authz.peer import peer_uri_sans
from extauthz.authz.policy import Policy
from extauthz.authz.rules import RuleDenied
from extauthz.config.schema import AuthzSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.types import AuthMethod, Headers, Identity, RequestView
from tests.support.certs import TestCA, url_encode

ORDERS = "spiffe://cluster.local/ns/shop/sa/orders"
WHO = Identity(method=AuthMethod.JWT, subject="alice", authenticator="idp",
               claims=MappingProxyType({}))


def view(principal: str = "", peer: str = "", headers: dict[str, str] | None = None
         ) -> RequestView:
    return RequestView(method="GET", host="h", path="/", source_address="10.0.0.7",
                       source_principal=principal, peer_certificate=peer,
                       headers=Headers(headers or {}))


def policy(*rules: dict[str, Any]) -> Policy:
    return Policy.from_spec(AuthzSpec.model_validate({"rules": list(rules)}))


def verdict(p: Policy, v: RequestView) -> str:
    try:
        p.evaluate(v, WHO, {})
    except RuleDenied as exc:
        decision = from_error(exc, "r")
        assert decision.http_status == 403 and decision.grpc_code is GrpcCode.PERMISSION_DENIED
        return exc.detail
    return "allow"


@pytest.mark.parametrize(("principal", "expected"), [
    (ORDERS, "allow"),
    ("spiffe://cluster.local/ns/shop/sa/legacy", "denied"),
    ("spiffe://cluster.local/ns/bank/sa/orders", "not allowed"),
    ("", "(none) is not allowed"),
])
def test_principal_rule(principal: str, expected: str) -> None:
    p = policy({"principal": {"allow": ["spiffe://cluster.local/ns/shop/*"],
                              "deny": ["spiffe://cluster.local/ns/shop/sa/legacy"]}})
    assert expected in verdict(p, view(principal))


def test_principal_shorthand_list_is_allow_and_ignores_client_headers() -> None:
    p = policy({"principal": [ORDERS]})
    assert verdict(p, view(ORDERS)) == "allow"
    forged = view("", headers={"x-forwarded-client-cert": f"URI={ORDERS}"})
    assert "not allowed" in verdict(p, forged)


def test_principal_rule_summary() -> None:
    assert "principal in [" in policy({"principal": [ORDERS]}).rules[0].summary()


def test_cel_source_variable() -> None:
    program = compile_expression(f'source.principal == "{ORDERS}" && '
                                 'source.address == "10.0.0.7"')
    data = activation_data(view(ORDERS), WHO, "r", {}, program.names)
    assert "uri_sans" not in data["source"]  # not parsed unless an expression names it
    assert data["source"]["principal"] == ORDERS


def test_cel_uri_sans_of_the_forwarded_peer_certificate() -> None:
    ca = TestCA.create()
    leaf = ca.issue(uris=[ORDERS, "spiffe://cluster.local/ns/shop/sa/other"], dns=["x.example"])
    program = compile_expression(f'"{ORDERS}" in source.uri_sans')
    assert "uri_sans" in names_used(program.source)
    for peer in (leaf.pem, url_encode(leaf.pem)):
        data = activation_data(view(peer=peer), WHO, "r", {}, program.names)
        assert data["source"]["uri_sans"] == [ORDERS, "spiffe://cluster.local/ns/shop/sa/other"]
    assert activation_data(view(), WHO, "r", {}, program.names)["source"]["uri_sans"] == []


@pytest.mark.parametrize("peer", ["garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                              "-----END CERTIFICATE-----\n", "x" * 70000])
def test_malformed_or_huge_peer_certificate_has_no_sans(peer: str) -> None:
    assert peer_uri_sans(view(peer=peer)) == []
