"""Everything a benchmark run needs on disk: keys, tokens, certificates, signed requests, configs.

All of it is generated fresh into the run's work directory (nothing secret is committed); the
credentials are throw-away and only ever sent to 127.0.0.1. Token and certificate helpers come
from ``tests/support`` (an implementation independent of the verifier under test).

The main extauthz configuration has one route per scenario; Envoy names the route with
``context_extensions`` (see :mod:`bench.envoyconf`). :func:`policy_authz` adapts the "policy"
scenario to what the checked-out extauthz supports: rules + a CEL condition, rules only, or the
original shorthand keys (detected by validating a candidate configuration).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extauthz.types import Headers, RequestView
from tests.support.certs import TestCA, xfcc_for
from tests.support.tokens import SigningKey, claims, ec_key, jwks, mint, rsa_key

ISSUER = "https://idp.bench.invalid"
AUDIENCE = "bench-api"
HOST = "bench.local"
#: a long validity so a long run never sees a token expire (and iat well in the past)
TOKEN_TTL = 6 * 3600

API_KEY = "eak_bench_" + "0" * 40  # throw-away; only its SHA-256 is in the configuration
HMAC_KEY_ID = "bench-partner"
HMAC_BODY = json.dumps({"order": {"id": 42, "items": ["a", "b", "c"], "note": "x" * 160}}).encode()


def sha256_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _rs256() -> SigningKey:
    return rsa_key("bench-rs-1", "RS256", 2048)


def _es256() -> SigningKey:
    return ec_key("bench-ec-1", "ES256")


def make_tokens(key: SigningKey, count: int, *, prefix: str = "user", **extra: Any) -> list[str]:
    """``count`` distinct tokens (distinct ``sub`` and ``jti``) signed by ``key``."""
    now = time.time()
    out = []
    for i in range(count):
        payload = claims(now=now, ttl=TOKEN_TTL, issuer=ISSUER, audience=AUDIENCE,
                         subject=f"{prefix}-{i}", scope="orders:read", jti=secrets.token_hex(8),
                         **extra)
        out.append(mint(key, payload))
    return out


@dataclass
class Fixtures:
    """Paths and credentials of one run (all under ``root``)."""

    root: Path
    config: Path
    api_key: str = API_KEY
    warm_tokens: Path = field(default_factory=Path)
    rs_new_tokens: Path = field(default_factory=Path)
    es_new_tokens: Path = field(default_factory=Path)
    policy_token: str = ""
    xfcc: str = ""
    hmac_headers: dict[str, str] = field(default_factory=dict)
    policy_kind: str = ""
    notes: list[str] = field(default_factory=list)


def hmac_signed_headers(secret: bytes, *, method: str, path: str, query: str,
                        body: bytes) -> dict[str, str]:
    """RFC 9421 hmac-sha256 headers for a request as Envoy will describe it to extauthz."""
    from extauthz import sfv
    from extauthz.authn.hmac_sig import sign, signature_base

    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    headers = {
        ":method": method, ":authority": HOST, ":path": f"{path}?{query}",
        "content-type": "application/json", "content-digest": digest,
    }
    view = RequestView(method=method, host=HOST, path=path, raw_query=query,
                       headers=Headers(headers), body=body)
    components = ["@method", "@authority", "@path", "@query", "content-digest"]
    inner = sfv.InnerList([sfv.Item(c) for c in components],
                          {"created": int(time.time()), "keyid": HMAC_KEY_ID})
    mac = sign(secret, signature_base(view, inner))
    return {
        "content-type": "application/json",
        "content-digest": digest,
        "signature-input": sfv.serialize_dictionary({"sig1": inner}),
        "signature": sfv.serialize_dictionary({"sig1": sfv.Item(mac)}),
    }


# ------------------------------------------------------------------------------------- policy

#: ten rules over the JWT identity and the request (the rules engine of issue 4)
POLICY_RULES: list[dict[str, Any]] = [
    {"scopes_any": ["orders:read", "orders:admin"]},
    {"claim": {"path": "tenant", "equals": "acme"}},
    {"roles": {"claim": "realm_access.roles", "any_of": ["reader", "admin"]}},
    {"header": {"name": "x-tenant", "equals": "acme"}},
    {"methods": ["GET", "HEAD"]},
    {"subjects": {"deny": ["blocked-user"]}},
    {"source": {"allow": ["127.0.0.0/8"]}},
    {"query": {"name": "page", "exists": True}},
    {"equal": {"param": "user_id", "claim": "sub"}},
    {"claim": {"path": "email", "regex": r"[a-z0-9.-]+@example\.com"}},
]
POLICY_CEL = (
    'identity.claims.tenant == request.headers["x-tenant"] && '
    '"orders:read" in identity.scopes && request.method == "GET"'
)
POLICY_PATH = "/s/policy/users/user-42/orders"
POLICY_QUERY = "page=1"


def policy_candidates() -> list[tuple[str, dict[str, Any]]]:
    """(kind, authz) from richest to plainest."""
    return [
        ("10 rules + CEL", {"scopes_all": ["orders:read"],
                            "rules": [*POLICY_RULES, {"cel": POLICY_CEL}]}),
        ("10 rules", {"scopes_all": ["orders:read"], "rules": POLICY_RULES}),
        ("shorthand (scopes_all, scopes_any, subjects)",
         {"scopes_all": ["orders:read"], "scopes_any": ["orders:read", "orders:admin"],
          "subjects": ["user-42"]}),
    ]


def config_is_valid(path: Path) -> tuple[bool, str]:
    """Validate and compile an extauthz configuration in-process: (ok, first problem)."""
    from extauthz.errors import ConfigError
    from extauthz.metrics import Metrics
    from extauthz.snapshot import load_snapshot

    try:
        load_snapshot(path, Metrics())
    except ConfigError as exc:
        return False, str(exc.issues[0]) if exc.issues else str(exc)
    except Exception as exc:  # an extauthz under construction: treat as unsupported
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


# ------------------------------------------------------------------------------ main config


def _jwt(jwks_file: str, algorithms: list[str], cache_size: int | None = None,
         **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": algorithms,
        "jwks": {"file": jwks_file},
    }
    if cache_size is not None:
        spec["cache_size"] = cache_size
    spec.update(extra)
    return {"jwt": spec}


def main_config(fx: Fixtures, policy_authz: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "settings": {"unmatched": "deny"},
        "authenticators": {
            "keys": {"api_key": {"sources": [{"header": "x-api-key"}]}},
            "rs256": _jwt("jwks-rs.json", ["RS256"]),
            "rs256-nocache": _jwt("jwks-rs.json", ["RS256"], cache_size=0),
            "es256-nocache": _jwt("jwks-ec.json", ["ES256"], cache_size=0),
            "certs": {"mtls": {"trust_bundles": ["ca.pem"], "xfcc": True}},
            "signed": {"hmac": {
                "keys": [{"id": HMAC_KEY_ID, "secret_file": "hmac.key", "consumer": "partner",
                          "scopes": ["orders:write"]}],
                "required_components": ["@method", "@authority", "@path", "@query"],
                "require_digest": True,
                # a pre-signed request is replayed for the whole run (no nonce, wide window)
                "max_skew_seconds": 3600,
                "max_age_seconds": 86400,
            }},
        },
        "consumers": [{"name": "bench-client", "keys": [
            {"id": "k1", "hash": sha256_hash(fx.api_key), "scopes": ["orders:read"]}]}],
        "routes": [
            {"name": "apikey", "match": {"prefix": "/s/apikey/"}, "authn": ["keys"],
             "authz": {"scopes_all": ["orders:read"]}},
            {"name": "jwt-rs256-warm", "match": {"prefix": "/s/jwt-rs256-warm/"},
             "authn": ["rs256"], "authz": {"scopes_all": ["orders:read"]}},
            {"name": "jwt-rs256-new", "match": {"prefix": "/s/jwt-rs256-new/"},
             "authn": ["rs256-nocache"], "authz": {"scopes_all": ["orders:read"]}},
            {"name": "jwt-es256-new", "match": {"prefix": "/s/jwt-es256-new/"},
             "authn": ["es256-nocache"], "authz": {"scopes_all": ["orders:read"]}},
            {"name": "mtls", "match": {"prefix": "/s/mtls/"}, "authn": ["certs"]},
            {"name": "hmac", "match": {"prefix": "/s/hmac/"}, "authn": ["signed"],
             "authz": {"scopes_all": ["orders:write"]}},
            {"name": "deny-401", "match": {"prefix": "/s/deny-401/"}, "authn": ["rs256"]},
            {"name": "policy", "match": {"template": "/s/policy/users/{user_id}/orders"},
             "authn": ["rs256"], "authz": policy_authz},
        ],
    }


def build(root: Path, *, new_tokens: int = 1000, warm_tokens: int = 16) -> Fixtures:
    """Generate keys, tokens, PKI, the HMAC request and the main configuration under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    fx = Fixtures(root=root, config=root / "extauthz.yaml")
    rs, es = _rs256(), _es256()
    (root / "jwks-rs.json").write_text(json.dumps(jwks(rs)))
    (root / "jwks-ec.json").write_text(json.dumps(jwks(es)))
    fx.warm_tokens = write_lines(root / "tokens-warm.txt", make_tokens(rs, warm_tokens))
    fx.rs_new_tokens = write_lines(root / "tokens-rs-new.txt", make_tokens(rs, new_tokens))
    fx.es_new_tokens = write_lines(root / "tokens-es-new.txt", make_tokens(es, new_tokens))
    fx.policy_token = mint(rs, claims(
        now=time.time(), ttl=TOKEN_TTL, issuer=ISSUER, audience=AUDIENCE, subject="user-42",
        scope="orders:read", tenant="acme", email="user-42@example.com",
        realm_access={"roles": ["reader"]}))

    ca = TestCA.create("bench root")
    leaf = ca.issue("bench client", uris=["spiffe://bench.local/ns/orders/sa/api"])
    ca.issued.write(root / "ca.pem")
    fx.xfcc = xfcc_for(leaf, chain=[leaf], by=None)

    secret = secrets.token_urlsafe(32)
    (root / "hmac.key").write_text(secret + "\n")
    (root / "hmac.key").chmod(0o600)
    fx.hmac_headers = hmac_signed_headers(secret.encode(), method="POST", path="/s/hmac/orders",
                                          query="a=1", body=HMAC_BODY)

    probe = root / "policy-probe.yaml"
    for kind, authz in policy_candidates():
        probe.write_text(yaml.safe_dump(main_config(fx, authz), sort_keys=False))
        ok, problem = config_is_valid(probe)
        if ok:
            fx.policy_kind = kind
            break
        fx.notes.append(f"policy variant {kind!r} not supported by this extauthz: {problem}")
    else:
        raise RuntimeError("no policy variant validates; see notes: " + "; ".join(fx.notes))
    probe.replace(fx.config)
    return fx


# ------------------------------------------------------------------------------ sweep configs


def sweep_routes_config(root: Path, count: int, fx: Fixtures) -> Path:
    """``count`` prefix routes; the benchmark's request matches only the **last** one and Envoy
    does not name it, so extauthz walks the whole table (the worst case)."""
    routes = [{"name": f"r{i:05d}", "match": {"prefix": f"/sweep/r{i:05d}/"}, "authn": ["keys"],
               "authz": {"scopes_all": ["orders:read"]}} for i in range(count - 1)]
    routes.append({"name": "target", "match": {"prefix": "/sweep/match/"}, "authn": ["keys"],
                   "authz": {"scopes_all": ["orders:read"]}})
    cfg = {"version": 1,
           "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
           "consumers": [{"name": "bench-client", "keys": [
               {"id": "k1", "hash": sha256_hash(fx.api_key), "scopes": ["orders:read"]}]}],
           "routes": routes}
    return _dump(root / f"sweep-routes-{count}.yaml", cfg)


def sweep_keys_config(root: Path, count: int, fx: Fixtures) -> tuple[Path, str]:
    """``count`` API keys (10 per consumer); the benchmark's key is the last one. Returns the
    configuration and its layout: a streamed JSON Lines ``api_key.keys_file`` when the
    checked-out extauthz has one (validated on a small file first), else ``consumers:`` in the
    configuration itself."""
    entries = []
    per = 10
    for n in range(count - 1):
        entries.append((f"c{n // per:06d}", f"k{n % per}", sha256_hash(f"eak_sweep_{n:08d}")))
    entries.append(("bench-client", "k1", sha256_hash(fx.api_key)))
    route = [{"name": "target", "match": {"prefix": "/sweep/target/"}, "authn": ["keys"],
              "authz": {"scopes_all": ["orders:read"]}}]
    if keys_file_supported(root):
        keys = root / f"sweep-keys-{count}.jsonl"
        with keys.open("w") as out:
            out.writelines(json.dumps({"consumer": c, "id": k, "hash": h,
                                       "scopes": ["orders:read"]}) + "\n"
                           for c, k, h in entries)
        cfg: dict[str, Any] = {
            "version": 1, "routes": route,
            "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}],
                                                    "keys_file": keys.name}}}}
        return _dump(root / f"sweep-keys-{count}.yaml", cfg), "keys_file"
    consumers: dict[str, list[dict[str, Any]]] = {}
    for c, k, h in entries:
        consumers.setdefault(c, []).append({"id": k, "hash": h, "scopes": ["orders:read"]})
    cfg = {"version": 1,
           "authenticators": {"keys": {"api_key": {"sources": [{"header": "x-api-key"}]}}},
           "consumers": [{"name": c, "keys": keys} for c, keys in consumers.items()],
           "routes": route}
    return _dump(root / f"sweep-keys-{count}.yaml", cfg), "consumers"


def keys_file_supported(root: Path) -> bool:
    """Whether this extauthz reads API keys from a JSON Lines ``keys_file`` (issue 16)."""
    keys = root / "probe-keys.jsonl"
    keys.write_text(json.dumps({"consumer": "probe", "id": "k1", "hash": sha256_hash("probe"),
                                "scopes": ["orders:read"]}) + "\n")
    cfg = {"version": 1,
           "authenticators": {"keys": {"api_key": {"keys_file": keys.name}}},
           "routes": [{"name": "all", "match": {"prefix": "/"}, "authn": ["keys"]}]}
    ok, _ = config_is_valid(_dump(root / "probe-keys.yaml", cfg))
    return ok


def sweep_issuers_config(root: Path, count: int, fx: Fixtures) -> Path:
    """``count`` JWT issuers, each with its own key set, authenticator and route; the benchmark
    sends a cached token of the last issuer to its route."""
    authenticators: dict[str, Any] = {}
    routes = []
    for i in range(count):
        name = "target" if i == count - 1 else f"iss{i:04d}"
        issuer = ISSUER if i == count - 1 else f"https://idp{i}.bench.invalid"
        key = _rs256() if i == count - 1 else ec_key(f"sweep-ec-{i}", "ES256")
        jwks_file = f"jwks-sweep-{i}.json"
        (root / jwks_file).write_text(json.dumps(jwks(key)))
        authenticators[name] = {"jwt": {"issuer": issuer, "audiences": [AUDIENCE],
                                        "algorithms": ["RS256", "ES256"],
                                        "jwks": {"file": jwks_file}}}
        routes.append({"name": name, "match": {"prefix": f"/sweep/{name}/"}, "authn": [name],
                       "authz": {"scopes_all": ["orders:read"]}})
    cfg = {"version": 1, "authenticators": authenticators, "routes": routes}
    return _dump(root / f"sweep-issuers-{count}.yaml", cfg)


def sweep_tokens_config(root: Path, cache_size: int) -> Path:
    """One RS256/ES256 issuer whose verified-token cache holds ``cache_size`` tokens."""
    (root / "jwks-sweep-tokens.json").write_text(json.dumps(jwks(_rs256(), _es256())))
    cfg = {"version": 1,
           "authenticators": {"target": _jwt("jwks-sweep-tokens.json", ["RS256", "ES256"],
                                             cache_size=cache_size)},
           "routes": [{"name": "target", "match": {"prefix": "/sweep/target/"},
                       "authn": ["target"], "authz": {"scopes_all": ["orders:read"]}}]}
    return _dump(root / f"sweep-tokens-{cache_size}.yaml", cfg)


def sweep_token_file(root: Path, count: int) -> Path:
    """``count`` distinct ES256 tokens (ES256: fast to sign; a cache hit costs the same for
    every algorithm)."""
    path = root / f"tokens-sweep-{count}.txt"
    if not path.exists():
        write_lines(path, make_tokens(_es256(), count, prefix="cached"))
    return path


def _dump(path: Path, data: dict[str, Any]) -> Path:
    # JSON is YAML: much faster to write for 100 000 keys, and read the same way.
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path
