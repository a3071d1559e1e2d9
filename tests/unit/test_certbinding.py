"""RFC 8705 certificate-bound tokens (extauthz/authn/certbinding.py) on the JWT authenticator:
the binding holds on every request (cache hits included), from the peer certificate or XFCC
under the trust model; every refusal is 401 / UNAUTHENTICATED with its own reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from extauthz.authn.mtls import cert_thumbprint_s256
from extauthz.errors import Reason
from extauthz.types import RequestView
from tests.support.builders import NOW, make_view
from tests.support.certs import TestCA, url_encode, xfcc_for
from tests.support.tokens import bearer, claims, mint, rsa_key
from tests.unit.test_introspection import OTHER, TOKEN, active, make, server  # noqa: F401
from tests.unit.test_jwt import build, denied

ROOT = TestCA.create("binding root", now=NOW)
A = ROOT.issue("a", uris=["spiffe://example.org/a"], now=NOW)
B = ROOT.issue("b", uris=["spiffe://example.org/b"], now=NOW)
PROXY = ROOT.issue("proxy", uris=["spiffe://example.org/proxy"], now=NOW)
A_X5T = cert_thumbprint_s256(A.pem)
TWO_HOPS = {"proxies": ["SANITIZE_SET", "APPEND_FORWARD"],
            "proxy_identities": ["spiffe://example.org/proxy"]}


def token(**extra: Any) -> str:
    return mint(rsa_key(), claims(now=NOW, **extra))


def request(tok: str, *, peer: Any = None, xfcc: str | None = None) -> RequestView:
    headers = bearer(tok)
    if xfcc is not None:
        headers["x-forwarded-client-cert"] = xfcc
    view = make_view(headers=headers)
    return dataclasses.replace(view, peer_certificate=url_encode(peer.pem) if peer else "")


async def test_bound_token_with_its_certificate_every_time() -> None:
    authn = build()
    bound = token(cnf={"x5t#S256": A_X5T})
    for _ in range(2):  # the second is a cache hit: the binding is still checked
        assert await authn.authenticate(request(bound, peer=A)) is not None
        await denied(authn.authenticate(request(bound, peer=B)), Reason.CERT_BINDING_MISMATCH)
        await denied(authn.authenticate(request(bound)), Reason.CERT_BINDING_MISMATCH)


async def test_xfcc_is_used_only_when_configured() -> None:
    bound = token(cnf={"x5t#S256": A_X5T})
    await denied(build().authenticate(request(bound, xfcc=xfcc_for(A))),
                 Reason.CERT_BINDING_MISMATCH)
    one = build(certificate_binding={"xfcc": True})
    assert await one.authenticate(request(bound, xfcc=xfcc_for(A))) is not None
    await denied(one.authenticate(request(bound, xfcc=xfcc_for(B))), Reason.CERT_BINDING_MISMATCH)
    await denied(one.authenticate(request(bound, xfcc=xfcc_for(B) + "," + xfcc_for(A))),
                 Reason.XFCC_MISMATCH)


async def test_two_hops_bind_to_the_client_element_not_the_peer() -> None:
    two = build(certificate_binding={"xfcc": TWO_HOPS})
    bound = token(cnf={"x5t#S256": A_X5T})
    header = xfcc_for(A) + "," + xfcc_for(PROXY)
    # the peer is the edge proxy: ignored for the binding, the first element counts
    assert await two.authenticate(request(bound, peer=PROXY, xfcc=header)) is not None
    await denied(two.authenticate(request(bound, peer=A, xfcc=xfcc_for(A))), Reason.XFCC_MISMATCH)


@pytest.mark.parametrize("cnf", ["x", [], {}, {"x5t#S256": None}, {"x5t#S256": "a" * 42},
                                 {"x5t#S256": A_X5T + "="}, {"x5t#S256": A_X5T + "\n"},
                                 {"jkt": "abc"}, {"jwk": {}}])
async def test_malformed_or_uncheckable_cnf_is_refused(cnf: Any) -> None:
    err = await denied(build().authenticate(request(token(cnf=cnf), peer=A)), Reason.INVALID_TOKEN)
    assert "cnf" in err.description or "confirmation" in err.description


async def test_required_binding_refuses_unbound_tokens() -> None:
    required = build(certificate_binding={"require": True})
    await denied(required.authenticate(request(token(), peer=A)), Reason.UNBOUND_TOKEN)
    assert await required.authenticate(request(token(cnf={"x5t#S256": A_X5T}), peer=A))
    assert await build().authenticate(request(token(), peer=A)) is not None  # optional by default


# -- introspection (RFC 8705 §3.2: the response's cnf) ------------------------------------------


async def test_introspection_response_cnf_binds_the_token(make: Any) -> None:  # noqa: F811
    auth, fake, _ = await make(certificate_binding={"require": True})
    fake.tokens[TOKEN] = active(cnf={"x5t#S256": A_X5T})
    fake.tokens[OTHER] = active()

    def view(tok: str, cert: Any) -> RequestView:
        return dataclasses.replace(make_view(headers={"authorization": f"Bearer {tok}"}),
                                   peer_certificate=url_encode(cert.pem) if cert else "")

    for _ in range(2):  # the second answer comes from the cache: still checked
        assert await auth.authenticate(view(TOKEN, A)) is not None
        await denied(auth.authenticate(view(TOKEN, B)), Reason.CERT_BINDING_MISMATCH)
        await denied(auth.authenticate(view(TOKEN, None)), Reason.CERT_BINDING_MISMATCH)
    await denied(auth.authenticate(view(OTHER, A)), Reason.UNBOUND_TOKEN)
    assert fake.calls == 2  # one introspection per token
