"""JWK Set parsing, the TTL/LRU cache, and remote key sets: fetch, refresh, rotation, refetch
rate-limiting and de-duplication, outages, staleness and OIDC discovery (against a real HTTP
server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from extauthz.authn.jwks import (
    MAX_DOCUMENT_BYTES,
    MAX_KEYS_PER_KID,
    RemoteJwks,
    b64url_decode,
    discovery_url,
    parse_jwks,
)
from extauthz.authn.jwt import JwtAuthenticator
from extauthz.authn.lru import TtlLru
from extauthz.clock import FixedClock
from extauthz.config.schema import JwtSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import CheckError, DependencyUnavailable, Reason
from extauthz.metrics import Metrics
from extauthz.types import Identity
from tests.support.builders import NOW, make_ctx, make_view
from tests.support.idp import FakeIdP, unused_port
from tests.support.tokens import (
    AUDIENCE,
    b64url,
    bearer,
    claims,
    ec_key,
    ed25519_key,
    jwks,
    mint,
    rsa_key,
)

K1 = rsa_key("k1")
K2 = rsa_key("k2")


async def denied(call: Awaitable[Any], reason: Reason, *, http: int, grpc: GrpcCode) -> CheckError:
    with pytest.raises(CheckError) as info:
        await call
    err = info.value
    assert err.reason is reason, f"{err.reason} ({err.detail})"
    decision = from_error(err, "r")
    assert decision.http_status == http
    assert decision.grpc_code is grpc
    return err


def unavailable(call: Awaitable[Any]) -> Awaitable[CheckError]:
    return denied(call, Reason.JWKS_UNAVAILABLE, http=503, grpc=GrpcCode.UNAVAILABLE)


def unknown_key(call: Awaitable[Any]) -> Awaitable[CheckError]:
    return denied(call, Reason.UNKNOWN_KEY, http=401, grpc=GrpcCode.UNAUTHENTICATED)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def fetches(metrics: Metrics, issuer: str, result: str) -> float:
    return sample(metrics, "extauthz_jwks_fetches_total", issuer=issuer, result=result) or 0.0


# ------------------------------------------------------------------------------------------ parsing


def test_b64url_is_strict() -> None:
    assert b64url_decode("") == b""
    assert b64url_decode("AQAB") == b"\x01\x00\x01"
    assert b64url_decode("-_8") == b"\xfb\xff"
    for bad in ("AQAB=", "A", "AQ+B", "AQ/B", "AQ B", "AR", "AQF"):  # AR/AQF: non-canonical bits
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_parse_good_keys_of_every_type() -> None:
    keys = [K1, ec_key("e256"), ec_key("e384", "ES384"), ec_key("e521", "ES512"), ed25519_key()]
    keyset = parse_jwks(jwks(*keys), ["RS256", "ES256", "ES384", "ES512", "EdDSA"])
    assert [k.kid for k in keyset.keys] == ["k1", "e256", "e384", "e521", "ed-1"]
    assert keyset.skipped == ()
    assert keyset.lookup("e384", "ES384") is keyset.keys[2]
    assert keyset.lookup("e384", "ES256") is None
    assert keyset.lookup("k1", "RS256") is keyset.keys[0]


def test_rsa_key_without_alg_serves_every_pinned_rsa_alg() -> None:
    keyset = parse_jwks(jwks(K1, alg=False), ["RS256", "PS384", "ES256"])
    assert keyset.keys[0].algorithms == {"RS256", "PS384"}


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ({**K1.public_jwk(), "d": "AAAA"}, "private key material"),
        ({**ec_key().public_jwk(), "d": "AAAA"}, "private key material"),
        (rsa_key("small", bits=1024).public_jwk(), "2048"),
        ({**K1.public_jwk(), "alg": "ES256"}, "conflicts"),
        ({**K1.public_jwk(), "alg": "HS256"}, "conflicts"),
        ({**K1.public_jwk(), "alg": "RSA-OAEP"}, "conflicts"),
        ({**K1.public_jwk(), "use": "enc"}, "'use'"),
        ({**K1.public_jwk(), "key_ops": ["encrypt"]}, "key_ops"),
        ({**K1.public_jwk(), "kid": 5}, "'kid'"),
        ({**K1.public_jwk(), "n": 5}, "'n'"),
        ({**K1.public_jwk(), "e": "A Q"}, "'e'"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "symmetric"),
        ({"kty": "DSA"}, "kty"),
        ({"kid": "x"}, "kty"),
        ({**ec_key().public_jwk(), "crv": "secp256k1"}, "crv"),
        ({**ec_key().public_jwk(), "x": b64url(bytes(31))}, "length"),
        ({**ec_key().public_jwk(), "y": b64url(bytes(32))}, "invalid key material"),
        ({**ed25519_key().public_jwk(), "crv": "X25519"}, "crv"),
        ({**ed25519_key().public_jwk(), "x": b64url(bytes(31))}, "length"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_parse_skips_bad_keys_and_keeps_good_ones(jwk: Any, reason: str) -> None:
    algs = ["RS256", "ES256", "EdDSA"]
    keyset = parse_jwks(jwks(jwk, K2), algs)
    assert [k.kid for k in keyset.keys] == ["k2"]
    assert len(keyset.skipped) == 1
    assert reason in keyset.skipped[0]
    assert keyset.skipped[0].startswith("keys[0]")


def test_parse_skips_keys_not_usable_with_pinned_algorithms() -> None:
    keyset = parse_jwks(jwks(K1, ec_key()), ["ES256"])
    assert [k.kid for k in keyset.keys] == ["ec-1"]
    assert "pinned" in keyset.skipped[0]


def test_parse_duplicates() -> None:
    # the same key twice is kept once; another key under the same kid is a candidate too
    same_kid = rsa_key("k1-again")
    doc = jwks(K1, K1, {**same_kid.public_jwk(), "kid": "k1"})
    keyset = parse_jwks(doc, ["RS256"])
    assert len(keyset.keys) == 2
    first, second = keyset.candidates("k1", "RS256")
    assert first.public_key.public_numbers() == (  # type: ignore[union-attr]
        K1.private_key.public_key().public_numbers()  # type: ignore[union-attr]
    )
    assert second.public_key.public_numbers() == (  # type: ignore[union-attr]
        same_kid.private_key.public_key().public_numbers()  # type: ignore[union-attr]
    )
    assert keyset.lookup("k1", "RS256") is first
    assert keyset.skipped == ("keys[1] (kid 'k1'): duplicate key",)


def test_duplicate_kid_candidates_are_bounded() -> None:
    keys = [{**ec_key(f"e{i}").public_jwk(), "kid": "dup"} for i in range(MAX_KEYS_PER_KID + 2)]
    keyset = parse_jwks({"keys": keys}, ["ES256"])
    assert len(keyset.candidates("dup", "ES256")) == MAX_KEYS_PER_KID
    assert len(keyset.skipped) == 2 and "more than" in keyset.skipped[0]


@pytest.mark.parametrize("doc", [[], {"keys": {}}, {"keys": "x"}, {}, "keys", None])
def test_parse_refuses_what_is_not_a_jwk_set(doc: Any) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        parse_jwks(doc, ["RS256"])


def test_parse_refuses_unsupported_algorithms() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        parse_jwks(jwks(K1), ["RS256", "HS256"])


def test_lookup_without_kid() -> None:
    one = parse_jwks(jwks(K1), ["RS256"])
    assert one.lookup(None, "RS256") is one.keys[0]
    assert one.lookup(None, "ES256") is None
    two = parse_jwks(jwks(K1, K2), ["RS256"])
    assert two.lookup(None, "RS256") is None
    assert two.count("RS256") == 2


def test_reparse_reuses_key_objects_and_generation() -> None:
    first = parse_jwks(jwks(K1, K2), ["RS256"])
    same = parse_jwks(jwks(K2, K1), ["RS256"], previous=first)
    assert same is first
    rotated = parse_jwks(jwks(K2, rsa_key("k3")), ["RS256"], previous=first)
    assert rotated.generation == first.generation + 1
    assert rotated.lookup("k2", "RS256") is first.lookup("k2", "RS256")
    assert first.lookup("k1", "RS256") not in rotated.live
    # a key whose JWK changed (here: its kid) is a different key
    renamed = parse_jwks(jwks({**K2.public_jwk(), "kid": "k2b"}), ["RS256"], previous=rotated)
    assert renamed.lookup("k2b", "RS256") is not rotated.lookup("k2", "RS256")


def test_discovery_url() -> None:
    assert (
        discovery_url("https://a.example") == "https://a.example/.well-known/openid-configuration"
    )
    assert discovery_url("https://a.example/realms/x/") == (
        "https://a.example/realms/x/.well-known/openid-configuration"
    )


# -------------------------------------------------------------------------------------------- LRU


def test_lru_evicts_least_recently_used() -> None:
    lru: TtlLru[str, int] = TtlLru(2)
    lru.put("a", 1, 100)
    lru.put("b", 2, 100)
    assert lru.get("a", 0) == 1  # a is now most recent
    lru.put("c", 3, 100)
    assert "b" not in lru
    assert lru.get("a", 0) == 1
    assert lru.get("c", 0) == 3
    assert len(lru) == 2


def test_lru_put_refreshes_recency() -> None:
    lru: TtlLru[str, int] = TtlLru(2)
    lru.put("a", 1, 100)
    lru.put("b", 2, 100)
    lru.put("a", 10, 100)  # update: a becomes most recent
    lru.put("c", 3, 100)
    assert "b" not in lru
    assert lru.get("a", 0) == 10


def test_lru_expiry_and_disabled() -> None:
    lru: TtlLru[str, int] = TtlLru(10)
    lru.put("a", 1, 100)
    assert lru.get("a", 99.9) == 1
    assert lru.get("a", 100) is None
    assert "a" not in lru
    off: TtlLru[str, int] = TtlLru(0)
    off.put("a", 1, 100)
    assert off.get("a", 0) is None
    assert len(off) == 0
    with pytest.raises(ValueError):
        TtlLru(-1)


# ---------------------------------------------------------------------------- remote key sources


def remote_spec(issuer: str, jwks_source: dict[str, Any], **overrides: Any) -> JwtSpec:
    data: dict[str, Any] = {
        "issuer": issuer,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256"],
        "jwks": jwks_source,
        "refresh_interval_seconds": 300,
        "max_stale_seconds": 3600,
        "fetch_timeout_seconds": 2,
        "min_refetch_interval_seconds": 10,
    }
    data.update(overrides)
    return JwtSpec.model_validate(data)


@asynccontextmanager
async def running(
    spec: JwtSpec, clock: FixedClock, metrics: Metrics
) -> AsyncIterator[JwtAuthenticator]:
    authn = JwtAuthenticator.from_spec("idp", spec, make_ctx(clock=clock, metrics=metrics))
    await authn.start()
    try:
        yield authn
    finally:
        await authn.close()


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    async with FakeIdP(jwks(K1)) as server:
        yield server


def token(key: Any, issuer: str, *, ttl: float = 86400, now: float = NOW, **extra: Any) -> str:
    return mint(key, claims(now=now, ttl=ttl, issuer=issuer, **extra))


async def verify(authn: JwtAuthenticator, tok: str) -> Identity:
    identity = await authn.authenticate(make_view(headers=bearer(tok)))
    assert identity is not None
    return identity


async def test_url_source_fetches_at_start(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        assert idp.jwks_hits == 1
        assert (await verify(authn, token(K1, idp.issuer))).key_id == "k1"
        assert fetches(metrics, idp.issuer, "ok") == 1
        assert sample(metrics, "extauthz_jwks_keys", issuer=idp.issuer) == 1
        clock.advance(42)
        await verify(authn, token(K1, idp.issuer, now=NOW + 42))
        assert sample(metrics, "extauthz_jwks_age_seconds", issuer=idp.issuer) == 42


async def test_unknown_kid_refetches_and_verifies_after_rotation(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        idp.jwks = jwks(K1, K2)
        assert (await verify(authn, token(K2, idp.issuer))).key_id == "k2"
        assert idp.jwks_hits == 2
        await verify(authn, token(K2, idp.issuer, jti="again"))
        assert idp.jwks_hits == 2  # known now: no further fetch


async def test_refetch_is_rate_limited(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    spec = remote_spec(idp.issuer, {"url": idp.jwks_url}, min_refetch_interval_seconds=10)
    async with running(spec, clock, metrics) as authn:
        stranger = rsa_key("k9")
        await unknown_key(
            authn.authenticate(make_view(headers=bearer(token(stranger, idp.issuer))))
        )
        assert idp.jwks_hits == 2  # start + one refetch
        for i in range(5):
            tok = token(stranger, idp.issuer, jti=str(i))
            await unknown_key(authn.authenticate(make_view(headers=bearer(tok))))
        assert idp.jwks_hits == 2  # rate-limited
        clock.advance(9)
        idp.jwks = jwks(K1, stranger)
        await unknown_key(
            authn.authenticate(make_view(headers=bearer(token(stranger, idp.issuer))))
        )
        assert idp.jwks_hits == 2
        clock.advance(1)
        assert (await verify(authn, token(stranger, idp.issuer))).key_id == "k9"
        assert idp.jwks_hits == 3


async def test_concurrent_unknown_kids_share_one_fetch(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        newcomers = [rsa_key(f"new-{i}") for i in range(3)]
        idp.jwks = jwks(K1, *newcomers)
        idp.delay = 0.2
        tokens = [token(newcomers[i % 3], idp.issuer, jti=str(i)) for i in range(30)]
        results = await asyncio.gather(*(verify(authn, t) for t in tokens))
        assert {r.key_id for r in results} == {"new-0", "new-1", "new-2"}
        assert idp.jwks_hits == 2  # start + exactly one shared refetch
        assert fetches(metrics, idp.issuer, "ok") == 2


async def test_concurrent_unknown_kids_fail_together_with_one_fetch(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        idp.delay = 0.2
        views = [
            make_view(headers=bearer(token(rsa_key(f"x{i % 2}"), idp.issuer))) for i in range(10)
        ]
        results = await asyncio.gather(
            *(authn.authenticate(v) for v in views), return_exceptions=True
        )
        assert all(isinstance(r, CheckError) and r.reason is Reason.UNKNOWN_KEY for r in results)
        assert idp.jwks_hits == 2


async def test_concurrent_refreshes_share_one_fetch(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        source = authn.jwks
        assert isinstance(source, RemoteJwks)
        idp.delay = 0.2
        results = await asyncio.gather(*(source.refresh() for _ in range(10)), source.refetch())
        assert all(results)
        assert idp.jwks_hits == 2


async def test_idp_down_at_start_gives_503() -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    issuer = f"http://127.0.0.1:{unused_port()}"
    spec = remote_spec(issuer, {"url": f"{issuer}/jwks.json"})
    async with running(spec, clock, metrics) as authn:  # start() must not raise
        tok = token(K1, issuer)
        err = await unavailable(authn.authenticate(make_view(headers=bearer(tok))))
        assert isinstance(err, DependencyUnavailable)
        assert fetches(metrics, issuer, "error") == 1
        # an absent credential is still just absent
        assert await authn.authenticate(make_view()) is None


async def test_idp_error_status_at_start_then_background_retry_recovers(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    idp.status = 500
    spec = remote_spec(
        idp.issuer, {"url": idp.jwks_url}, refresh_interval_seconds=0.05, max_stale_seconds=60
    )
    async with running(spec, clock, metrics) as authn:
        await unavailable(authn.authenticate(make_view(headers=bearer(token(K1, idp.issuer)))))
        assert fetches(metrics, idp.issuer, "error") == 1
        idp.status = 200
        for _ in range(100):
            if authn.jwks.keyset is not None:
                break
            await asyncio.sleep(0.02)
        assert (await verify(authn, token(K1, idp.issuer))).key_id == "k1"


async def test_background_refresh_picks_up_rotation(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    spec = remote_spec(
        idp.issuer, {"url": idp.jwks_url}, refresh_interval_seconds=0.05, max_stale_seconds=60
    )
    async with running(spec, clock, metrics) as authn:
        idp.jwks = jwks(K2)
        for _ in range(100):
            keyset = authn.jwks.keyset
            if keyset is not None and keyset.lookup("k2", "RS256") is not None:
                break
            await asyncio.sleep(0.02)
        hits = idp.jwks_hits
        assert hits >= 2
        assert (await verify(authn, token(K2, idp.issuer))).key_id == "k2"
    await asyncio.sleep(0.15)
    assert idp.jwks_hits == hits  # close() stopped the loop


async def test_stale_keys_kept_within_max_stale_then_503(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    spec = remote_spec(
        idp.issuer, {"url": idp.jwks_url}, refresh_interval_seconds=60, max_stale_seconds=600
    )
    async with running(spec, clock, metrics) as authn:
        tok = token(K1, idp.issuer, ttl=86400)
        await verify(authn, tok)  # now cached too
        idp.status = 503
        clock.advance(300)
        assert not await authn.jwks.refresh()  # type: ignore[attr-defined]
        assert fetches(metrics, idp.issuer, "error") == 1
        assert sample(metrics, "extauthz_jwks_age_seconds", issuer=idp.issuer) == 300
        await verify(authn, tok)
        await verify(authn, token(K1, idp.issuer, ttl=86400, jti="uncached"))
        clock.advance(300)  # exactly max_stale: still served
        await verify(authn, tok)
        clock.advance(1)
        await unavailable(authn.authenticate(make_view(headers=bearer(tok))))  # cached or not
        await unavailable(
            authn.authenticate(make_view(headers=bearer(token(K1, idp.issuer, jti="n"))))
        )
        # the IdP comes back: a successful refresh makes the keys fresh again
        idp.status = 200
        assert await authn.jwks.refresh()  # type: ignore[attr-defined]
        await verify(authn, tok)


async def test_failed_or_invalid_fetch_keeps_previous_keys(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        source = authn.jwks
        assert isinstance(source, RemoteJwks)
        before = source.keyset
        for body in (
            b"not json",
            b'{"keys": []}',
            b'{"keys": [{"kty": "oct", "k": "AA"}]}',
            b"[]",
            b'{"keys": [], "x": NaN}',
        ):
            idp.raw_body = body
            assert not await source.refresh()
            assert source.keyset is before
        assert fetches(metrics, idp.issuer, "invalid") == 5
        # a valid JWK Set, just too large
        idp.raw_body = json.dumps({**jwks(K1), "pad": "x" * MAX_DOCUMENT_BYTES}).encode()
        assert not await source.refresh()
        assert fetches(metrics, idp.issuer, "invalid") == 6
        idp.chunked = True  # no Content-Length: the streaming limit must hold too
        assert not await source.refresh()
        assert fetches(metrics, idp.issuer, "invalid") == 7
        assert source.keyset is before
        await verify(authn, token(K1, idp.issuer))


async def test_fetch_timeout(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    idp.delay = 1.0
    spec = remote_spec(idp.issuer, {"url": idp.jwks_url}, fetch_timeout_seconds=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running(spec, clock, metrics) as authn:
        assert loop.time() - started < 0.8  # start() is bounded by the fetch timeout
        assert fetches(metrics, idp.issuer, "timeout") == 1
        await unavailable(authn.authenticate(make_view(headers=bearer(token(K1, idp.issuer)))))


async def test_cached_token_stops_verifying_after_key_removed(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    idp.jwks = jwks(K1, K2)
    async with running(remote_spec(idp.issuer, {"url": idp.jwks_url}), clock, metrics) as authn:
        source = authn.jwks
        assert isinstance(source, RemoteJwks)
        old, kept = token(K1, idp.issuer), token(K2, idp.issuer)
        await verify(authn, old)
        await verify(authn, kept)
        # a refresh returning the same keys keeps cache entries valid
        assert await source.refresh()
        await verify(authn, old)
        await verify(authn, kept)
        hits = sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit")
        assert hits == 2
        # k1 is removed at the next refresh: its tokens stop verifying, k2's stay cached
        idp.jwks = jwks(K2)
        assert await source.refresh()
        await unknown_key(authn.authenticate(make_view(headers=bearer(old))))
        await verify(authn, kept)
        assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 3


async def test_discovery(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"discovery": True}), clock, metrics) as authn:
        assert idp.discovery_hits == 1
        assert idp.jwks_hits == 1
        assert (await verify(authn, token(K1, idp.issuer))).key_id == "k1"
        assert fetches(metrics, idp.issuer, "ok") == 1


async def test_discovery_with_mismatched_issuer_refused(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    idp.discovery_issuer = "https://evil.example.com"
    async with running(remote_spec(idp.issuer, {"discovery": True}), clock, metrics) as authn:
        assert idp.discovery_hits == 1
        assert idp.jwks_hits == 0  # the lying document's jwks_uri is never followed
        assert fetches(metrics, idp.issuer, "invalid") == 1
        await unavailable(authn.authenticate(make_view(headers=bearer(token(K1, idp.issuer)))))


async def test_discovery_trailing_slash_must_match_exactly(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    issuer = idp.issuer + "/"  # the document says issuer without the slash
    async with running(remote_spec(issuer, {"discovery": True}), clock, metrics) as authn:
        assert idp.discovery_hits == 1  # the URL is built without the trailing slash
        assert fetches(metrics, issuer, "invalid") == 1
        assert authn.jwks.keyset is None


def test_remote_source_validation() -> None:
    common: dict[str, Any] = {
        "algorithms": ["RS256"],
        "clock": FixedClock(NOW),
        "metrics": Metrics(),
    }
    with pytest.raises(ValueError, match="discovery"):
        RemoteJwks(issuer="not-a-url", discovery=True, **common)
    with pytest.raises(ValueError, match="exactly one"):
        RemoteJwks(issuer="https://a", **common)
    with pytest.raises(ValueError, match="absolute"):
        RemoteJwks(issuer="https://a", url="https://", **common)


async def test_close_without_start_and_refetch_after_close(idp: FakeIdP) -> None:
    metrics, clock = Metrics(), FixedClock(NOW)
    spec = remote_spec(idp.issuer, {"url": idp.jwks_url})
    authn = JwtAuthenticator.from_spec("idp", spec, make_ctx(clock=clock, metrics=metrics))
    await authn.close()
    assert not await authn.jwks.refetch()
    assert idp.jwks_hits == 0


async def test_discovery_failing_later_refreshes_from_the_last_good_jwks_uri(
    idp: FakeIdP,
) -> None:
    """Issue 13.4: the last good discovery result is kept. When only the discovery document
    fails (here it names another issuer), keys still come from the jwks_uri discovered before."""
    metrics, clock = Metrics(), FixedClock(NOW)
    async with running(remote_spec(idp.issuer, {"discovery": True}), clock, metrics) as authn:
        idp.discovery_issuer = "https://evil.example.com"
        idp.jwks = jwks(K1, K2)  # a rotation
        assert await authn.jwks.refresh()
        assert idp.discovery_hits == 2 and idp.jwks_hits == 2
        assert (await verify(authn, token(K2, idp.issuer))).key_id == "k2"


async def test_a_remote_key_set_is_ready_once_keys_were_loaded(idp: FakeIdP) -> None:
    """The contract's ``ready()`` (what the server waits for before reporting ready)."""
    metrics, clock = Metrics(), FixedClock(NOW)
    spec = remote_spec(idp.issuer, {"url": idp.jwks_url})
    unstarted = JwtAuthenticator.from_spec("idp", spec, make_ctx(clock=clock, metrics=metrics))
    assert not unstarted.ready()  # nothing fetched yet
    async with running(spec, clock, metrics) as authn:
        assert authn.ready()
