#!/usr/bin/env python3
"""RSS of an extauthz worker holding verified JWTs in its cache (docs/memory.md).

Three measurements:

``warm``      a real ``extauthz serve`` (HTTP ext_authz listener on loopback, one process) with
              one RS256 issuer (inline JWKS, ``cache_size`` = ``--tokens``) is sent ``--tokens``
              distinct valid tokens (~750 bytes: iss, aud, sub, iat, nbf, exp an hour ahead, a
              UUID jti, scope, azp), each once, then each of a sample again (all must be cache
              hits); prints its RSS idle, after the load, and the cost per cached token.
``stream``    the same server with the default ``cache_size`` is sent an endless stream of
              distinct EdDSA tokens whose ``exp`` is ``--lifetime`` seconds ahead (leeway 0),
              minted as they are sent, in real time; prints tokens seen, the rate and RSS every
              ``--every`` tokens, and with ``--png`` draws the curve (RSS against tokens seen).
``entries``   in this process, bytes per cache entry (tracemalloc) of the JWT cache (EdDSA
              tokens: an entry does not depend on the algorithm) and of the introspection cache
              (realistic RFC 7662 answers, evaluated and cached as the authenticator does).
``simulate``  in this process, the authenticator alone under the project's FixedClock advanced
              by 1 / ``--rate`` per token, so hours of traffic take a minute (docs/state.md).

    .venv/bin/python scripts/measure_cache_rss.py warm --tokens 100000
    .venv/bin/python scripts/measure_cache_rss.py stream --tokens 300000 --lifetime 5 \\
        --png docs/memory-stream.png
    .venv/bin/python scripts/measure_cache_rss.py simulate --tokens 200000 --lifetime 300
    .venv/bin/python scripts/measure_cache_rss.py entries --tokens 20000

The machine it runs on may be shared: RSS is not affected much, rates are.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import struct
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from extauthz.demo.procs import LOOPBACK, ManagedProcess, extauthz_argv, free_ports, http_ok
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey, ed25519_key, jwks, mint, rsa_key


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def realistic_claims(now: float, lifetime: float, i: int) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i:08d}", "iat": int(now),
            "nbf": int(now), "exp": int(now + lifetime), "jti": str(uuid.uuid4()),
            "scope": "orders:read orders:write", "azp": "orders-web"}


class Server:
    """``extauthz serve`` with one JWT issuer, checked over its HTTP ext_authz listener."""

    def __init__(self, base: Path, key: SigningKey, alg: str, cache_size: int | None,
                 leeway: int = 30) -> None:
        spec: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": [alg],
                                "jwks": {"inline": jwks(key)}, "leeway_seconds": leeway}
        if cache_size is not None:
            spec["cache_size"] = cache_size
        config = base / "extauthz.yaml"
        config.write_text(json.dumps({
            "authenticators": {"idp": {"jwt": spec}},
            "routes": [{"name": "all", "match": {"prefix": "/"}, "authn": ["idp"]}],
        }))
        grpc_port, self.http_port, self.authz_port = free_ports(3)
        argv = [*extauthz_argv(config, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{self.http_port}",
                               log_level="WARNING"),
                "--http-authz-address", f"{LOOPBACK}:{self.authz_port}"]
        self.process = ManagedProcess("extauthz", argv, base / "extauthz.log").start()
        self.process.wait_ready(http_ok(f"http://{LOOPBACK}:{self.http_port}/readyz"), 60)
        self.conn = http.client.HTTPConnection(LOOPBACK, self.authz_port, timeout=10)

    def check(self, token: str) -> int:
        self.conn.request("GET", "/check/x", headers={"Authorization": f"Bearer {token}"})
        response = self.conn.getresponse()
        response.read()
        return response.status

    def rss(self) -> float:
        assert self.process.pid is not None
        return rss_mib(self.process.pid)

    def metric(self, name: str, **labels: str) -> float:
        conn = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}}") or (not want and line.startswith(name + " ")):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def close(self) -> None:
        self.conn.close()
        self.process.stop()


def warm(tokens: int) -> None:
    key = rsa_key()
    now = time.time()
    print(f"# minting {tokens} RS256 tokens ...", flush=True)
    minted = [mint(key, realistic_claims(now, 3600, i)) for i in range(tokens)]
    sizes = sorted(len(t) for t in minted)
    with tempfile.TemporaryDirectory(prefix="measure-rss-") as tmp:
        server = Server(Path(tmp), key, "RS256", cache_size=tokens)
        try:
            idle = server.rss()
            for token in minted:
                if server.check(token) != 200:
                    raise SystemExit("a valid token was refused")
            for token in minted[:: max(1, tokens // 1000)]:
                server.check(token)  # must be hits
            time.sleep(1)
            loaded = server.rss()
            hits = server.metric("extauthz_cache_requests_total", cache="jwt", result="hit")
            time.sleep(32)  # serve's --heap-trim-interval (30 s) gives freed heap back
            trimmed = server.rss()
        finally:
            server.close()
    print("| tokens cached | token bytes | RSS idle (MiB) | RSS with the tokens cached (MiB) "
          "| after a heap trim (MiB) | per token (bytes) | hits of the re-sent sample |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {tokens} | {sizes[0]}-{sizes[-1]} | {idle:.1f} | {loaded:.1f} | {trimmed:.1f} | "
          f"{(trimmed - idle) * 2**20 / tokens:.0f} | {hits:.0f} |")


def stream(tokens: int, lifetime: float, every: int, png: Path | None) -> None:
    key = ed25519_key()
    rows: list[tuple[int, float, float, float]] = []  # seen, seconds, RSS, rate
    with tempfile.TemporaryDirectory(prefix="measure-rss-") as tmp:
        server = Server(Path(tmp), key, "EdDSA", cache_size=None, leeway=0)
        try:
            started = time.monotonic()
            rows.append((0, 0, server.rss(), 0.0))
            print(f"# exp {lifetime:g}s ahead, leeway 0, default cache_size; real time")
            print("| tokens seen | seconds | tokens/s | RSS (MiB) |")
            print("|---|---|---|---|")
            for i in range(1, tokens + 1):
                token = mint(key, realistic_claims(time.time(), lifetime, i))
                if server.check(token) != 200:
                    raise SystemExit("a valid token was refused")
                if i % every == 0:
                    elapsed = time.monotonic() - started
                    rows.append((i, elapsed, server.rss(), i / elapsed))
                    print(f"| {i} | {elapsed:.0f} | {i / elapsed:.0f} | {rows[-1][2]:.1f} |",
                          flush=True)
        finally:
            server.close()
    if png is not None:
        write_png(png, [(r[0], r[2]) for r in rows])
        print(f"# wrote {png}")


def simulate(tokens: int, lifetime: float, rate: float, every: int) -> None:
    from extauthz.authn.jwt import JwtAuthenticator
    from extauthz.clock import FixedClock
    from extauthz.config.schema import JwtSpec
    from tests.support.builders import NOW, make_ctx, make_view

    async def run() -> None:
        key = ed25519_key()
        clock = FixedClock(NOW)
        spec = JwtSpec.model_validate({
            "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["EdDSA"],
            "jwks": {"inline": jwks(key)}, "cache_size": 100_000,
        })
        auth = JwtAuthenticator.from_spec("idp", spec, make_ctx(clock=clock))
        await auth.start()
        print(f"# lifetime {lifetime:g}s, {rate:g} tokens/s, cache_size {spec.cache_size}")
        print(f"{'tokens':>8} {'cached':>8} {'rss_mib':>8}")
        try:
            for i in range(1, tokens + 1):
                token = mint(key, realistic_claims(clock(), lifetime, i))
                view = make_view("/x", headers={"authorization": f"Bearer {token}"})
                if await auth.authenticate(view) is None:
                    raise SystemExit("a valid token was refused")
                clock.advance(1 / rate)
                if i % every == 0:
                    gc.collect()
                    print(f"{i:>8} {len(auth._cache):>8} {rss_mib():>8.1f}", flush=True)
        finally:
            await auth.close()

    asyncio.run(run())


def entries(count: int) -> None:
    import tracemalloc

    from extauthz.authn.cache import credential_key
    from extauthz.authn.introspection import IntrospectionAuthenticator
    from extauthz.authn.jwt import JwtAuthenticator
    from extauthz.clock import FixedClock
    from extauthz.config.schema import IntrospectionSpec, JwtSpec
    from extauthz.metrics import Metrics
    from tests.support.builders import NOW, make_ctx, make_view

    def measured(fill: Any) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        fill()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        return sum(s.size_diff for s in after.compare_to(before, "filename")) / count

    key = ed25519_key()
    clock = FixedClock(NOW)
    jwt_spec = JwtSpec.model_validate({"issuer": ISSUER, "audiences": [AUDIENCE],
                                       "algorithms": ["EdDSA"], "jwks": {"inline": jwks(key)},
                                       "cache_size": count})
    jwt_auth = JwtAuthenticator.from_spec("idp", jwt_spec, make_ctx(clock=clock))
    views = [make_view("/x", headers={"authorization": "Bearer "
                                      + mint(key, realistic_claims(NOW, 3600, i))})
             for i in range(count + 1)]
    asyncio.run(jwt_auth.authenticate(views[-1]))  # first-use allocations out of the figure

    async def fill_jwt() -> None:
        for view in views[:count]:
            await jwt_auth.authenticate(view)

    jwt_bytes = measured(lambda: asyncio.run(fill_jwt()))
    spec = IntrospectionSpec.model_validate({"endpoint": "http://127.0.0.1:1/introspect",
                                             "client_id": "c", "client_secret_env": "UNUSED",
                                             "cache_size": count})
    intro = IntrospectionAuthenticator("opaque", spec, "s", clock=clock, metrics=Metrics())
    answers = [json.dumps({"active": True, "sub": f"user-{i:08d}", "client_id": "orders-web",
                           "scope": "orders:read orders:write", "iss": ISSUER, "aud": AUDIENCE,
                           "exp": int(NOW) + 3600, "iat": int(NOW), "nbf": int(NOW),
                           "jti": str(uuid.uuid4()), "token_type": "Bearer",
                           "username": f"user{i}"}) for i in range(count)]

    def fill_intro() -> None:
        for i, answer in enumerate(answers):
            result = intro._evaluate(json.loads(answer))
            assert result.identity is not None
            intro._cache.put(credential_key(f"opaque-{i}"), result, result.identity.expires_at)

    intro_bytes = measured(fill_intro)
    print("| cache | entries | bytes per entry (tracemalloc, key and LRU slot included) |")
    print("|---|---|---|")
    print(f"| JWT (9 claims) | {len(jwt_auth._cache)} | {jwt_bytes:.0f} |")
    print(f"| introspection (12 members) | {len(intro._cache)} | {intro_bytes:.0f} |")


# -- a tiny PNG line chart (no plotting library needed) ---------------------------------------

_DIGITS = {  # 3x5 glyphs
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "k": "100101110101101", "M": "101111111101101",
    "i": "010000010010010", "B": "110101110101110", ".": "000000000000010", " ": "0" * 15,
}


def write_png(path: Path, points: list[tuple[float, float]], width: int = 640,
              height: int = 320) -> None:
    """RSS (MiB, y from 0) against tokens seen (x), with labelled end values."""
    pixels = bytearray(b"\xff" * (width * height * 3))
    left, bottom, right, top = 50, 30, width - 20, 20

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[(y * width + x) * 3:(y * width + x) * 3 + 3] = bytes(rgb)

    def text(x: int, y: int, value: str) -> None:
        for n, char in enumerate(value):
            glyph = _DIGITS.get(char, _DIGITS[" "])
            for g, bit in enumerate(glyph):
                if bit == "1":
                    for dx in range(2):
                        for dy in range(2):
                            put(x + n * 8 + (g % 3) * 2 + dx, y + (g // 3) * 2 + dy, (0, 0, 0))

    max_x = max(p[0] for p in points) or 1
    max_y = max(p[1] for p in points) * 1.15 or 1
    for x in range(left, right):
        put(x, height - bottom, (0, 0, 0))
    for y in range(top, height - bottom):
        put(left, y, (0, 0, 0))
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = int(height - bottom - frac * (height - bottom - top))
        for x in range(left, right, 4):
            put(x, y, (200, 200, 200))
        text(4, y - 5, f"{max_y * frac:.0f}M")
    text(right - 60, height - bottom + 8, f"{max_x / 1000:.0f}k")
    text(left + 4, height - bottom + 8, "0")

    def at(p: tuple[float, float]) -> tuple[int, int]:
        return (int(left + p[0] / max_x * (right - left)),
                int(height - bottom - p[1] / max_y * (height - bottom - top)))

    for a, b in itertools.pairwise(points):
        (x0, y0), (x1, y1) = at(a), at(b)
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x, y = x0 + (x1 - x0) * s // steps, y0 + (y1 - y0) * s // steps
            for d in range(-1, 2):
                put(x, y + d, (31, 119, 180))
    raw = b"".join(b"\x00" + bytes(pixels[r * width * 3:(r + 1) * width * 3])
                   for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p_warm = sub.add_parser("warm")
    p_warm.add_argument("--tokens", type=int, default=100_000)
    p_stream = sub.add_parser("stream")
    p_stream.add_argument("--tokens", type=int, default=300_000)
    p_stream.add_argument("--lifetime", type=float, default=5)
    p_stream.add_argument("--every", type=int, default=20_000)
    p_stream.add_argument("--png", type=Path, default=None)
    p_entries = sub.add_parser("entries")
    p_entries.add_argument("--tokens", type=int, default=20_000)
    p_sim = sub.add_parser("simulate")
    p_sim.add_argument("--tokens", type=int, default=200_000)
    p_sim.add_argument("--lifetime", type=float, default=300)
    p_sim.add_argument("--rate", type=float, default=200)
    p_sim.add_argument("--every", type=int, default=20_000)
    args = parser.parse_args()
    if args.mode == "warm":
        warm(args.tokens)
    elif args.mode == "entries":
        entries(args.tokens)
    elif args.mode == "stream":
        stream(args.tokens, args.lifetime, args.every, args.png)
    else:
        simulate(args.tokens, args.lifetime, args.rate, args.every)


if __name__ == "__main__":
    main()
