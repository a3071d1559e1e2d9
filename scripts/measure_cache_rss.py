#!/usr/bin/env python3
"""RSS of a JWT authenticator (default settings) under a stream of distinct valid tokens.

Every token is new (another ``sub``/``jti``), valid for ``--lifetime`` seconds, and arrives at
``--rate`` tokens per (simulated) second: the clock is the project's FixedClock, advanced by
1/rate per token, so hours of traffic take a minute. Prints one line per ``--every`` tokens:
tokens seen, entries in the verified-token cache, RSS in MiB.

    .venv/bin/python scripts/measure_cache_rss.py --tokens 200000 --lifetime 300 --rate 200

Expected with expired entries dropped: the cache levels off at about rate x (lifetime + leeway)
entries (or cache_size, whichever is smaller) and RSS with it. Numbers: docs/state.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauthz.authn.jwt import JwtAuthenticator
from extauthz.clock import FixedClock
from extauthz.config.schema import JwtSpec
from tests.support.builders import NOW, make_ctx, make_view
from tests.support.tokens import AUDIENCE, ISSUER, claims, ed25519_key, jwks, mint


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(tokens: int, lifetime: float, rate: float, every: int) -> None:
    key = ed25519_key()
    clock = FixedClock(NOW)
    spec = JwtSpec.model_validate({
        "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["EdDSA"],
        "jwks": {"inline": jwks(key)},
    })  # everything else default: cache_size 100 000, leeway as shipped
    auth = JwtAuthenticator.from_spec("idp", spec, make_ctx(clock=clock))
    await auth.start()
    print(f"# lifetime {lifetime:g}s, {rate:g} tokens/s, cache_size {spec.cache_size}")
    print(f"{'tokens':>8} {'cached':>8} {'rss_mib':>8}")
    try:
        for i in range(1, tokens + 1):
            token = mint(key, claims(now=clock(), ttl=lifetime, subject=f"user-{i}",
                                     jti=f"jti-{i:08d}", scope="orders:read orders:write"))
            view = make_view("/x", headers={"authorization": f"Bearer {token}"})
            if await auth.authenticate(view) is None:
                raise SystemExit("a valid token was refused")
            clock.advance(1 / rate)
            if i % every == 0:
                gc.collect()
                cached = len(auth._cache) if auth._cache is not None else 0
                print(f"{i:>8} {cached:>8} {rss_mib():>8.1f}", flush=True)
    finally:
        await auth.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--lifetime", type=float, default=300)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--every", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(run(args.tokens, args.lifetime, args.rate, args.every))


if __name__ == "__main__":
    main()
