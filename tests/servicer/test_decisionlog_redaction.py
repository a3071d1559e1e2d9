"""Credential leak through the decision log: run the real server in process (gRPC Check, decision
log on stdout, logging on stderr), send every kind of credential we accept — valid, invalid,
misplaced — and grep everything the process wrote for each of them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from extauthz.config.schema import JwksSpec, JwtSpec
from extauthz.keys import hash_api_key
from extauthz.policytest import Minter
from extauthz.server import Server, ServerOptions

KEY = "eak_redaction-header-key-1111111111"
QUERY_KEY = "eak_redaction-query-key-22222222222"
COOKIE_KEY = "eak_redaction-cookie-key-3333333333"
SCHEME_KEY = "eak_redaction-scheme-key-4444444444"
WRONG_KEY = "eak_redaction-wrong-key-55555555555"

ISSUER = "https://idp.redaction.test"


def minter() -> Minter:
    spec = JwtSpec(issuer=ISSUER, audiences=["api"], algorithms=["ES256"],
                   jwks=JwksSpec(inline={"keys": []}))
    return Minter.generate(spec)


def config(m: Minter) -> str:
    entries = "\n".join(
        f'  - {{id: k{i}, hash: "{hash_api_key(k)}", scopes: [read]}}'
        for i, k in enumerate((KEY, QUERY_KEY, COOKIE_KEY, SCHEME_KEY)))
    return f"""
authenticators:
  keys:
    api_key:
      sources: [{{header: x-api-key}}, {{query: api_key}}, {{cookie: k}}, {{authorization: ApiKey}}]
  idp:
    jwt:
      issuer: {ISSUER}
      audiences: [api]
      algorithms: [ES256]
      jwks: {{inline: {json.dumps({"keys": [m.public_jwk]})}}}
      claims_to_headers: {{email: x-auth-email}}
consumers:
- name: alice
  keys:
{entries}
routes:
- name: api
  match: {{prefix: /api/}}
  authn: [idp, keys]
  authz:
    rules:
    - scopes_any: [read, write]
- name: strict
  match: {{prefix: /strict/}}
  authn: [idp, keys]
  authz:
    rules:
    - scopes_all: [admin]
- name: shadow
  match: {{prefix: /shadow/}}
  authn: [idp, keys]
  authz:
    shadow: true
    rules:
    - scopes_all: [admin]
"""


def check_request(path: str, headers: dict[str, str]) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", path, "svc.local"
    http.headers.update({":method": "GET", ":path": path, ":authority": "svc.local", **headers})
    req.attributes.source.address.socket_address.address = "10.0.0.9"
    return req


async def test_no_credential_in_decision_log_or_logs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    m = minter()
    token = m.mint({"sub": "alice", "scope": "read", "email": "alice@example.com"})
    admin_token = m.mint({"sub": "root", "scope": "admin"})
    expired = m.mint({"sub": "alice", "iat": 1_600_000_000, "exp": 1_600_000_300})
    wrong_aud = m.mint({"sub": "alice", "aud": "other"})
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}AAAA"
    forged = minter().mint({"sub": "alice"})  # same kid, a key the server does not have
    requests = [
        ("/api/a", {"x-api-key": KEY}),
        (f"/api/b?api_key={QUERY_KEY}&page=2", {}),
        ("/api/c", {"cookie": f"theme=dark; k={COOKIE_KEY}"}),
        ("/api/d", {"authorization": f"ApiKey {SCHEME_KEY}"}),
        ("/api/e", {"x-api-key": WRONG_KEY}),
        ("/api/f", {"authorization": f"Bearer {token}"}),
        ("/api/g", {"authorization": f"Bearer {tampered}"}),
        ("/api/h", {"authorization": f"Bearer {expired}"}),
        ("/api/i", {"authorization": f"Bearer {wrong_aud}"}),
        ("/api/j", {"authorization": f"Bearer {forged}"}),
        ("/api/k", {"authorization": "Bearer not.a.jwt-but-secret-9f8e7d"}),
        ("/strict/l", {"authorization": f"Bearer {token}"}),
        ("/strict/m", {"x-api-key": KEY}),
        ("/shadow/n", {"authorization": f"Bearer {token}"}),
        ("/shadow/o", {"x-api-key": KEY, "x-auth-subject": "spoofed-admin"}),
        ("/strict/p", {"authorization": f"Bearer {admin_token}"}),
        # a key sent where no authenticator reads it: as a bare name, as a name with a value,
        # as a path parameter -- still never in the log (issue 12, finding 6)
        (f"/api/q?{QUERY_KEY}", {}),
        (f"/api/r?{QUERY_KEY}=x&page=1", {}),
        (f"/api/s;jsessionid={QUERY_KEY}", {}),
    ]
    secrets = [KEY, QUERY_KEY, COOKIE_KEY, SCHEME_KEY, WRONG_KEY, "not.a.jwt-but-secret-9f8e7d"]
    for jwt_token in (token, admin_token, expired, wrong_aud, tampered, forged):
        secrets.append(jwt_token)
        secrets.extend(jwt_token.split(".")[1:])  # payload and signature, each on its own

    path = tmp_path / "config.yaml"
    path.write_text(config(m))
    caplog.set_level(logging.DEBUG)
    capsys.readouterr()
    server = Server(ServerOptions(str(path), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2))
    await server.start()  # the decision log is bound to sys.stdout (captured) here
    codes = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for request_path, headers in requests:
                response = await stub.Check(check_request(request_path, headers))
                codes.append((response.status.code, response.denied_response.status.code))
    finally:
        await server.stop()
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == len(requests)
    by_path = {line["path"].split("?")[0]: line for line in lines}
    # sanity: the requests did what we think (so the grep below covers every path)
    expected = {
        "/api/a": ("allow", "ok"), "/api/b": ("allow", "ok"), "/api/c": ("allow", "ok"),
        "/api/d": ("allow", "ok"), "/api/e": ("deny", "invalid_api_key"),
        "/api/f": ("allow", "ok"), "/api/g": ("deny", "bad_signature"),
        "/api/h": ("deny", "token_expired"), "/api/i": ("deny", "wrong_audience"),
        "/api/j": ("deny", "bad_signature"), "/api/k": ("deny", "malformed_token"),
        "/strict/l": ("deny", "insufficient_scope"), "/strict/m": ("deny", "insufficient_scope"),
        "/shadow/n": ("shadow_deny", "insufficient_scope"),
        "/shadow/o": ("shadow_deny", "insufficient_scope"), "/strict/p": ("allow", "ok"),
        "/api/q": ("deny", "missing_credential"), "/api/r": ("deny", "missing_credential"),
        "/api/s;": ("deny", "bad_request"),
    }
    assert {p: (line["outcome"], line["reason"]) for p, line in by_path.items()} == expected
    # the path only: no query value, no query name, no path parameter
    assert by_path["/api/b"]["path"] == "/api/b"
    assert by_path["/api/r"]["path"] == "/api/r"
    assert by_path["/api/s;"]["path"] == "/api/s;"
    assert by_path["/shadow/n"]["rule"] == "rules[0]"
    assert codes[4] == (16, 401) and codes[11] == (7, 403) and codes[13] == (0, 0)
    everything = captured.out + captured.err + caplog.text
    for secret in secrets:
        assert secret not in everything, f"credential leaked: {secret[:12]}…"
