"""Bearer dispatch: JWT vs opaque tokens, and several JWT issuers on one route."""

from __future__ import annotations

import json
import time
from pathlib import Path

from extauthz.authn.base import CredentialSurface
from extauthz.authn.dispatch import needs_dispatch, select
from extauthz.config.loader import load_config
from extauthz.errors import Reason
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import compile_config
from extauthz.types import AuthMethod, Identity, RequestView
from tests.support import tokens
from tests.support.builders import make_view


class Fake:
    def __init__(self, name: str, kind: AuthMethod, issuer: str | None = None) -> None:
        self.name, self.kind = name, kind
        self.surface = CredentialSurface(issuer=issuer)  # dispatch reads only the declaration


A = Fake("a", AuthMethod.JWT, "https://a.example")
B = Fake("b", AuthMethod.JWT, "https://b.example")
OPAQUE = Fake("intro", AuthMethod.INTROSPECTION)
KEY = Fake("key", AuthMethod.API_KEY)


def bearer_view(token: str) -> RequestView:
    return make_view(headers={"authorization": f"Bearer {token}"})


def jwt_for(issuer: str) -> str:
    return tokens.mint(tokens.rsa_key(), tokens.claims(now=time.time(), issuer=issuer))


def test_needs_dispatch_only_with_several_bearer_methods() -> None:
    assert not needs_dispatch([A, KEY])  # type: ignore[list-item]
    assert needs_dispatch([A, OPAQUE])  # type: ignore[list-item]
    assert needs_dispatch([A, B])  # type: ignore[list-item]


def test_opaque_token_goes_to_introspection_only() -> None:
    assert select([A, OPAQUE, KEY], bearer_view("2YotnFZFEjr1zCsicMWpAA")) == [  # type: ignore[list-item]
        OPAQUE, KEY]


def test_jwt_goes_to_the_issuers_verifier_only() -> None:
    chosen = select([A, B, OPAQUE, KEY], bearer_view(jwt_for("https://b.example")))  # type: ignore[list-item]
    assert chosen == [B, KEY]


def test_unknown_issuer_keeps_every_verifier_so_the_first_refuses() -> None:
    chosen = select([A, B], bearer_view(jwt_for("https://evil.example")))  # type: ignore[list-item]
    assert chosen == [A, B]


def test_no_bearer_changes_nothing() -> None:
    assert select([A, OPAQUE], make_view()) == [A, OPAQUE]  # type: ignore[list-item]


async def test_two_issuers_on_one_route_through_the_pipeline(tmp_path: Path) -> None:
    key_a, key_b = tokens.rsa_key("ka"), tokens.ec_key("kb")
    (tmp_path / "a.json").write_text(json.dumps(tokens.jwks(key_a)))
    (tmp_path / "b.json").write_text(json.dumps(tokens.jwks(key_b)))
    aud = tokens.AUDIENCE
    (tmp_path / "c.yaml").write_text(f"""
authenticators:
  idp-a: {{jwt: {{issuer: "https://a.example", audiences: ["{aud}"], algorithms: [RS256],
          jwks: {{file: a.json}}}}}}
  idp-b: {{jwt: {{issuer: "https://b.example", audiences: ["{aud}"], algorithms: [ES256],
          jwks: {{file: b.json}}}}}}
routes:
- {{name: r, authn: [idp-a, idp-b]}}
""")
    snapshot = compile_config(load_config(tmp_path / "c.yaml"), Metrics())
    engine = Engine(Metrics(), snapshot)
    now = time.time()
    for key, issuer, name in ((key_a, "https://a.example", "idp-a"),
                              (key_b, "https://b.example", "idp-b")):
        token = tokens.mint(key, tokens.claims(now=now, issuer=issuer, subject=name))
        d = await engine.check(bearer_view(token))
        assert d.allowed, (name, d.reason)
        assert isinstance(d.identity, Identity) and d.identity.authenticator == name
    # A token naming issuer B but signed by A's key is still refused by B's verifier.
    forged = tokens.mint(key_a, tokens.claims(now=now, issuer="https://b.example"))
    d = await engine.check(bearer_view(forged))
    assert d.http_status == 401 and d.reason is not Reason.OK


async def test_claim_header_spoofing_removed_when_the_token_lacks_the_claim(
    tmp_path: Path,
) -> None:
    """claims_to_headers names a header outside x-auth-*: a client must not be able to send it."""
    key = tokens.rsa_key("k")
    (tmp_path / "j.json").write_text(json.dumps(tokens.jwks(key)))
    (tmp_path / "c.yaml").write_text(f"""
routes:
- name: r
  authn:
  - jwt: {{issuer: "{tokens.ISSUER}", audiences: ["{tokens.AUDIENCE}"], algorithms: [RS256],
          jwks: {{file: j.json}}, claims_to_headers: {{email: x-user-email}}}}
""")
    engine = Engine(Metrics(), compile_config(load_config(tmp_path / "c.yaml"), Metrics()))
    now = time.time()
    no_email = tokens.mint(key, tokens.claims(now=now))
    d = await engine.check(make_view(headers={"authorization": f"Bearer {no_email}",
                                              "x-user-email": "admin@example.com"}))
    assert d.allowed
    assert "x-user-email" in d.remove_headers
    assert "x-user-email" not in dict(d.upstream_headers)
    with_email = tokens.mint(key, tokens.claims(now=now, email="alice@example.com"))
    d = await engine.check(make_view(headers={"authorization": f"Bearer {with_email}",
                                              "x-user-email": "admin@example.com"}))
    assert dict(d.upstream_headers)["x-user-email"] == "alice@example.com"
    assert "x-user-email" not in d.remove_headers  # overwritten, not removed
