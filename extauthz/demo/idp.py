"""A tiny OpenID Connect identity provider for the demo and the end-to-end tests.

It serves what a resource server needs to verify tokens, and nothing an attacker could use
outside a laptop (bind it to 127.0.0.1 only):

``GET /.well-known/openid-configuration``
    ``{"issuer": <base url>, "jwks_uri": <base url>/jwks.json, ...}``
``GET /jwks.json``
    the *published* public keys
``GET /demo/token?sub=alice&scope=orders:read+admin&aud=...&ttl=300``
    a freshly signed access token as ``text/plain`` (demo convenience: anyone who can reach
    the IdP gets a token, which is exactly why it only ever listens on loopback)

The IdP is an in-process object (:class:`DemoIdP`) running on a background thread, so tests
control it directly::

    idp = DemoIdP().start()                    # free port; idp.issuer == "http://127.0.0.1:PORT"
    token = idp.mint("alice", scopes=["orders:read"])
    kid = idp.new_key(publish=False)           # staged: tokens signed with it have an unknown kid
    idp.publish(kid)                           # ... until it is rotated in
    idp.mode = "error"                         # 500 / "slow" (idp.delay s) / "garbage" / "ok"
    idp.down(); idp.up()                       # connection refused, then back on the same port
    idp.close()

Faults (``mode``, ``down``) apply to discovery and JWKS, never to ``/demo/token``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from extauthz.demo.background import BackgroundApp

DEFAULT_PORT = 18081
DEFAULT_AUDIENCE = "extauthz-demo"

Mode = Literal["ok", "error", "slow", "garbage"]
_MODES = ("ok", "error", "slow", "garbage")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key the IdP holds."""

    kid: str
    alg: str
    private_key: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def generate_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    """A new private key for ``alg`` (RS*/PS* -> RSA 2048, ES256/ES384 -> P-256/P-384)."""
    private: PrivateKey
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        raise ValueError(f"unsupported algorithm for the demo IdP: {alg}")
    return SigningKey(kid or f"demo-{uuid.uuid4().hex[:12]}", alg, private)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
    """An ``alg: none`` token (``header.payload.``) for attack tests."""
    hdr = {"alg": "none", "typ": "JWT", **(header or {})}
    return _b64(json.dumps(hdr).encode()) + "." + _b64(json.dumps(dict(claims)).encode()) + "."


class DemoIdP:
    """An OIDC issuer whose keys, tokens and failures are controlled by the caller."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        audience: str = DEFAULT_AUDIENCE,
        alg: str = "RS256",
    ) -> None:
        self.audience = audience
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._published: list[str] = []
        self._mode: Mode = "ok"
        #: seconds a "slow" IdP waits before answering
        self.delay = 5.0
        #: requests served per path (discovery, jwks, token), for assertions
        self.hits: Counter[str] = Counter()
        self.signing_kid = self.new_key(alg, publish=True)
        self._server = BackgroundApp(self._make_app, host, port, name="idp")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DemoIdP:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def down(self) -> None:
        """Stop answering: the port refuses connections, open connections are closed."""
        self._server.down()

    def up(self) -> None:
        """Listen again on the same port."""
        self._server.up()

    def __enter__(self) -> DemoIdP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def issuer(self) -> str:
        """The issuer identifier (also the base URL): ``http://127.0.0.1:<port>``."""
        return self._server.base_url

    base_url = issuer

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks.json"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    # -- faults ----------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}")
        self._mode = value

    # -- keys ------------------------------------------------------------------------------

    def new_key(self, alg: str = "RS256", *, publish: bool = True, kid: str | None = None) -> str:
        """Generate a key; publish it in the JWKS now or later (:meth:`publish`). Returns kid."""
        key = generate_key(alg, kid)
        with self._lock:
            self._keys[key.kid] = key
            if publish:
                self._published.append(key.kid)
        return key.kid

    def publish(self, kid: str) -> None:
        with self._lock:
            if kid not in self._keys:
                raise KeyError(kid)
            if kid not in self._published:
                self._published.append(kid)

    def unpublish(self, kid: str) -> None:
        with self._lock:
            if kid in self._published:
                self._published.remove(kid)

    def rotate(self, alg: str = "RS256", *, retire_old: bool = False) -> str:
        """Publish a new key and sign with it from now on; optionally unpublish the old ones."""
        kid = self.new_key(alg, publish=True)
        with self._lock:
            if retire_old:
                self._published = [kid]
            self.signing_kid = kid
        return kid

    def key(self, kid: str) -> SigningKey:
        with self._lock:
            return self._keys[kid]

    def jwks(self) -> dict[str, Any]:
        """The published JWK set."""
        with self._lock:
            keys = [self._keys[k] for k in self._published]
        return {"keys": [k.public_jwk() for k in keys]}

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            algs = sorted({k.alg for k in self._keys.values()})
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": f"{self.issuer}/demo/token",
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        }

    # -- tokens ----------------------------------------------------------------------------

    def claims(
        self,
        subject: str = "alice",
        *,
        scopes: Iterable[str] = (),
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        expires_in: float | None = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The standard claim set :meth:`mint` signs (``expires_in=None``: no ``exp``)."""
        now = time.time()
        iat = now if issued_at is None else issued_at
        claims: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "aud": self.audience if audience is None else audience,
            "iat": int(iat),
            "jti": uuid.uuid4().hex,
        }
        if expires_in is not None:
            claims["exp"] = int(now + expires_in)
        if not_before is not None:
            claims["nbf"] = int(not_before)
        scope_list = list(scopes)
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        claims.update(extra or {})
        return claims

    def mint(
        self,
        subject: str = "alice",
        *,
        scopes: Iterable[str] = (),
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        expires_in: float | None = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        extra: Mapping[str, Any] | None = None,
        kid: str | None = None,
        sign_with: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign a token. ``kid`` goes in the header (default: the current signing key);
        ``sign_with`` names the key that actually signs (default: the one ``kid`` names), so
        ``mint(kid=published, sign_with=other)`` forges a bad signature."""
        claims = self.claims(
            subject,
            scopes=scopes,
            audience=audience,
            issuer=issuer,
            expires_in=expires_in,
            not_before=not_before,
            issued_at=issued_at,
            extra=extra,
        )
        return self.sign(claims, kid=kid, sign_with=sign_with, headers=headers)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        sign_with: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign an arbitrary claim set (see :meth:`mint` for ``kid``/``sign_with``)."""
        header_kid = kid or self.signing_kid
        key = self.key(sign_with or header_kid)
        hdr = {"kid": header_kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(dict(claims), key.private_key, algorithm=key.alg, headers=hdr)

    # -- HTTP ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._serve_discovery)
        app.router.add_get("/jwks.json", self._serve_jwks)
        app.router.add_get("/demo/token", self._serve_token)
        return app

    async def _faulty(self) -> web.Response | None:
        mode = self._mode
        if mode == "error":
            return web.json_response({"error": "server_error"}, status=500)
        if mode == "garbage":
            return web.Response(body=b"<html>\x00\xff not json {", content_type="application/json")
        if mode == "slow":
            await asyncio.sleep(self.delay)
        return None

    async def _serve_discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        return await self._faulty() or web.json_response(self.discovery())

    async def _serve_jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        return await self._faulty() or web.json_response(
            self.jwks(), headers={"Cache-Control": "max-age=60"}
        )

    async def _serve_token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        q = request.query
        try:
            ttl = float(q.get("ttl", "300"))
        except ValueError:
            return web.Response(status=400, text="ttl must be a number\n")
        scopes = q.get("scope", "").replace(",", " ").split()
        token = self.mint(
            q.get("sub", "alice"),
            scopes=scopes,
            audience=q.get("aud") or None,
            expires_in=ttl,
            extra={"email": q["email"]} if "email" in q else None,
        )
        return web.Response(text=token + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="extauthz demo OIDC identity provider")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    with DemoIdP(port=args.port) as idp:
        print(
            f"demo IdP: issuer {idp.issuer}; token: curl -s '{idp.issuer}/demo/token'", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
