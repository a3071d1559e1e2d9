"""Fuzz run of the full ``Check`` path: random and mutated CheckRequests through the servicer.

The all-kinds configuration (:mod:`tests.support.allkinds`: every authenticator, policies with
claims/headers/query/CEL/source rules) is served by an in-process
:class:`~extauthz.servicer.AuthorizationServicer`; requests are built from a seeded
``random.Random`` for a bounded time and go to ``servicer.Check`` as Envoy's would — a part also
over a real gRPC channel to a running :class:`~extauthz.server.Server`.

Two kinds of request:

* **forged** — credentials are random, mutated from a valid one (a changed key, a JWT with a
  changed payload or signature, correctly signed but expired / wrong audience / wrong issuer /
  another key, a wrong password, a certificate from another CA or with changed bytes, a request
  changed after it was HMAC-signed, an opaque token the endpoint calls inactive). Nothing in such a
  request is a valid credential.
* **valid** — the intact credentials of one or more methods, with everything else mutated (junk,
  huge, binary or non-UTF-8 headers; odd paths, methods, bodies; context_extensions; repeated
  ``header_map`` entries; source addresses that are not addresses).

Invariants, for every request: ``Check`` returns a CheckResponse (never raises; over the channel:
never a gRPC error); the gRPC code is one extauthz maps (OK, INVALID_ARGUMENT, PERMISSION_DENIED,
RESOURCE_EXHAUSTED, UNAVAILABLE, UNAUTHENTICATED) and a deny carries the HTTP status of that code
and a problem+json body with the same reason; the reason is never ``internal_error`` (that means an
exception escaped somewhere: a bug); a *forged* request is never allowed on any route but the
public one; an allowed request never forwards a client-sent ``x-auth-*`` header.

``EXTAUTHZ_FUZZ_SECONDS`` (default 15) bounds the run. The seed is fixed by default, so CI
replays the same sequence (a time bound only changes how far it gets) and cannot turn red by luck;
``EXTAUTHZ_FUZZ_SEED=random`` explores new inputs (do that in local deep runs), and
``EXTAUTHZ_FUZZ_SEED=N`` replays a run (the seed is in every failure message).
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, unquote

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from extauthz import sfv
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.authn.hmac_sig import ComponentError, sign, signature_base
from extauthz.authn.xfcc import XfccError, parse_xfcc
from extauthz.decision import Decision
from extauthz.decisionlog import DecisionLog
from extauthz.errors import CheckError, Reason
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.request import from_check_request
from extauthz.server import Server, ServerOptions
from extauthz.servicer import AuthorizationServicer
from extauthz.snapshot import Snapshot, load_snapshot
from extauthz.types import RequestView
from tests.support.allkinds import (
    API_KEY,
    BASIC_PASSWORD,
    BASIC_USER,
    HMAC_SECRET,
    AllKinds,
    IntrospectionStub,
    check_request,
    write_all_kinds,
)
from tests.support.certs import TestCA, xfcc_for
from tests.support.tokens import claims, ec_key, mint, rsa_key

FUZZ_SECONDS = float(os.environ.get("EXTAUTHZ_FUZZ_SECONDS", "15"))
_SEED_SETTING = os.environ.get("EXTAUTHZ_FUZZ_SEED", "20261123")
FUZZ_SEED = (random.SystemRandom().randrange(2**32) if _SEED_SETTING == "random"
             else int(_SEED_SETTING))
#: every Nth request also goes over a real gRPC channel
WIRE_EVERY = 10
LIMITS = {"max_header_bytes": 32768, "max_headers": 64, "max_token_bytes": 4096,
          "max_signature_components": 16, "max_body_bytes": 8192}
OPAQUE_TOKEN = "opaque-valid-token-0123456789"

#: gRPC code -> the HTTP status a deny with it must carry
STATUSES = {3: 400, 7: 403, 8: 429, 14: 503, 16: 401}
PREFIXES = ["/public/", "/keys/", "/jwt/", "/bearer/", "/mtls/", "/basic/", "/hmac/",
            "/cavage/", "/all/", "/any/", "/users/user-1/docs", "/nowhere/", ""]
ROUTE_NAMES = ["public", "keys", "jwt", "bearer", "mtls", "basic", "hmac", "cavage", "all",
               "any", "docs", "nope", "", "PUBLIC"]
JUNK_NAMES = ["x-tenant", "x-deny", "x-auth-subject", "x-auth-roles", "x-auth-email",
              "x-envoy-auth-partial-body", "content-type", "date", "x-date", "digest",
              "content-digest", "host", ":authority", ":path", ":method", "x-request-id",
              "cookie", "signature", "signature-input", "authorization", "x-api-key",
              "x-forwarded-client-cert", "x-forwarded-for", "te", "x" * 300, "X-Mixed-Case"]


class Recorder(DecisionLog):
    """Keeps the last decision the servicer made (the route it chose is not on the wire)."""

    def __init__(self) -> None:  # no thread, no stream: nothing of the real log is used
        self.last: Decision | None = None

    def write(self, view: RequestView | None, decision: Decision, latency_s: float) -> None:
        self.last = decision

    def close(self, timeout: float = 5.0) -> None:
        pass


@dataclass
class Draft:
    """One request under construction."""

    path: str
    method: str = "GET"
    host: str = "api.example.com"
    headers: dict[str, str] = field(default_factory=dict)
    raw: list[tuple[str, bytes]] | None = None
    body: bytes = b""
    certificate: str = ""
    extensions: dict[str, str] = field(default_factory=dict)
    source: str = "192.0.2.10"
    forged: bool = True
    #: "rfc9421" / "cavage": signed last, over the final request; "forge": a wrong signature
    hmac: str | None = None

    def request(self) -> Any:
        return check_request(self.path, self.headers, method=self.method, host=self.host,
                             body=self.body, raw_headers=self.raw,
                             certificate=self.certificate, context_extensions=self.extensions,
                             source_address=self.source)


def _cert_of_pem(pem: str) -> bytes | None:
    """The DER of the first certificate in ``pem`` as extauthz would load it (None: none)."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("utf-8", "replace"))
    except (ValueError, x509.InvalidVersion):
        return None
    return certs[0].public_bytes(serialization.Encoding.DER) if certs else None


def _cert_of_xfcc(header: str) -> bytes | None:
    try:
        element = parse_xfcc(header)[-1]
    except XfccError:
        return None
    return _cert_of_pem(element.cert) if element.cert else None


class Generator:
    """Seeded request generator (see the module docstring)."""

    def __init__(self, rng: random.Random, kinds: AllKinds) -> None:
        self.rng = rng
        self.kinds = kinds
        now = time.time()
        self.valid_jwt = kinds.token(realm_access={"roles": ["admin"]}, email="a@example.com")
        self.other_ca = TestCA.create("fuzz other root", now=now)
        self.other_leaf = self.other_ca.issue(uris=["spiffe://example.org/ns/fuzz/sa/x"],
                                              now=now)
        self.valid_xfcc = xfcc_for(kinds.leaf)
        self.leaf_pem = kinds.leaf.pem

    # -- small random pieces ---------------------------------------------------------------

    def text(self, size: int = 20) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            alphabet = 'abcXYZ019 -_.,;:=/"\\()%@?&#*+'
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size + 1)))
        if kind < 0.8:
            return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(size + 1)))
        return "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0x80, 0x800),
                                       rng.randrange(0x1F600, 0x1F650)]))
                       for _ in range(rng.randrange(size + 1)))

    def mutate(self, value: str, *, changes: int = 3) -> str:
        """``value`` with 1..changes characters replaced, inserted or deleted (never equal)."""
        rng = self.rng
        out = list(value)
        for _ in range(rng.randint(1, changes)):
            at = rng.randrange(len(out) + 1)
            char = rng.choice('aZ09-_.=+/ ",;:%\\\x00é')
            op = rng.random()
            if op < 0.4 and at < len(out):
                out[at] = char
            elif op < 0.7 and at < len(out):
                del out[at]
            else:
                out.insert(at, char)
        mutated = "".join(out)
        return mutated if mutated != value else value + "x"

    def huge(self) -> str:
        return self.rng.choice(["a", "=", ",", " ", '"', "é"]) * self.rng.choice(
            [1000, 5000, 40000, 70000])

    # -- forged credentials (never valid) --------------------------------------------------

    def _unlike(self, make: Any, valid: str) -> str:
        """``make()`` until it is not ``valid`` once trimmed (a mutation may only add blanks)."""
        for _ in range(10):
            candidate: str = make()
            if candidate.strip(" \t") != valid:
                return candidate
        return valid + "x"

    def forged_api_key(self) -> str:
        return self._unlike(lambda: self.rng.choice(
            [self.mutate(API_KEY), self.text(40), API_KEY[:-1], API_KEY + "0", API_KEY.upper(),
             "eak_" + "0" * 40]), API_KEY)

    def forged_cookie_key(self) -> str:
        """A forged key that stays forged inside a cookie: ``;`` ends a cookie value, so a
        mutation such as ``<the valid key>;`` would be the valid key once the cookie is read."""
        for _ in range(10):
            candidate = self.forged_api_key()
            if candidate.split(";", 1)[0].strip(" \t") != API_KEY:
                return candidate
        return API_KEY + "x"

    def forged_jwt(self) -> str:
        return self._unlike(self._forged_jwt, self.valid_jwt)

    def _forged_jwt(self) -> str:
        rng = self.rng
        now = time.time()
        key = self.kinds.jwt_key
        choice = rng.randrange(10)
        if choice == 0:
            head, payload, sig = self.valid_jwt.split(".")
            return ".".join([head, self.mutate(payload, changes=1), sig])
        if choice == 1:
            head, payload, sig = self.valid_jwt.split(".")
            return ".".join([head, payload, self.mutate(sig, changes=1)])
        if choice == 2:
            return mint(key, claims(now=now - 3600, ttl=60))  # expired
        if choice == 3:
            return mint(key, claims(now=now, audience="api://other"))
        if choice == 4:
            return mint(key, claims(now=now, issuer="https://evil.example.com"))
        if choice == 5:
            return mint(rsa_key(), claims(now=now), alg="ES256", kid="ec-1", sign_alg="RS256")
        if choice == 6:
            return mint(ec_key(kid="other", alg="ES256"), claims(now=now))
        if choice == 7:
            head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
            body = base64.urlsafe_b64encode(json.dumps(claims(now=now)).encode()).rstrip(b"=")
            return f"{head}.{body.decode()}."
        if choice == 8:
            return mint(key, claims(now=now, subject="", realm_access={"roles": ["admin"]}))
        return self.mutate(self.valid_jwt, changes=4)

    def forged_basic(self) -> str:
        rng = self.rng
        pairs = [(BASIC_USER, self.mutate(BASIC_PASSWORD)), ("mallory", BASIC_PASSWORD),
                 (BASIC_USER, ""), (self.text(8), self.text(8)), ("bob", "wrong")]
        user, password = rng.choice(pairs)
        raw = f"{user}:{password}".encode("utf-8", "surrogateescape")
        token = base64.b64encode(raw).decode()
        return rng.choice(["Basic ", "basic ", "BASIC  "]) + rng.choice(
            [token, self.mutate(token, changes=1), token + "=", ""])

    def forged_xfcc(self) -> str:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            return xfcc_for(self.other_leaf)
        if choice == 1:  # only mutations that change the certificate itself
            for _ in range(10):
                candidate = self.mutate(self.valid_xfcc, changes=2)
                if _cert_of_xfcc(candidate) != self.kinds.leaf.der:
                    return candidate
            return xfcc_for(self.other_leaf)
        if choice == 2:
            der = bytearray(self.kinds.leaf.der)
            der[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
            body = base64.b64encode(bytes(der)).decode()
            pem = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
            return f"By=spiffe://x;Cert={quote(pem, safe='')}"
        return self.valid_xfcc.replace("Hash=", "Hash=00")

    def forged_peer(self) -> str:
        choice = self.rng.choice([quote(self.other_leaf.pem, safe=""), self.text(50),
                                  quote(self.mutate(self.leaf_pem, changes=2), safe="")])
        if _cert_of_pem(unquote(choice)) == self.kinds.leaf.der:
            return quote(self.other_leaf.pem, safe="")
        return choice

    def forged_signature(self, draft: Draft) -> None:
        """An RFC 9421 or cavage signature that does not match the request."""
        try:
            self._forged_signature(draft)
        except (CheckError, ComponentError):
            draft.headers["signature"] = self.text(40)

    def _forged_signature(self, draft: Draft) -> None:
        rng = self.rng
        secret = rng.choice([b"wrong-secret-of-at-least-32-bytes-long!!", HMAC_SECRET])
        if rng.random() < 0.5:
            draft.headers.update(self._rfc9421(draft, secret))
        else:
            draft.headers["authorization"] = self._cavage(draft, secret)
        if secret == HMAC_SECRET:  # signed correctly, then a covered header is changed
            draft.headers["date"] = formatdate(time.time() - 7, usegmt=True)

    def forged_opaque(self) -> str:
        return self._unlike(lambda: self.rng.choice(
            [self.mutate(OPAQUE_TOKEN), self.text(30) or "t", "a" * 200]), OPAQUE_TOKEN)

    # -- valid credentials -----------------------------------------------------------------

    def _view(self, draft: Draft) -> RequestView:
        return from_check_request(draft.request())

    def _rfc9421(self, draft: Draft, secret: bytes) -> dict[str, str]:
        draft.headers.setdefault("date", formatdate(time.time(), usegmt=True))
        components = ("@method", "@authority", "@path", "@query", "date")
        inner = sfv.InnerList([sfv.Item(c) for c in components],
                              {"created": int(time.time()), "keyid": "k1"})
        mac = sign(secret, signature_base(self._view(draft), inner))
        return {"signature-input": "sig1=" + sfv.serialize_inner_list(inner),
                "signature": "sig1=" + sfv.serialize_item(sfv.Item(mac))}

    def _cavage(self, draft: Draft, secret: bytes) -> str:
        date = formatdate(time.time(), usegmt=True)
        draft.headers["date"] = date
        view = self._view(draft)
        target = view.path + (f"?{view.raw_query}" if view.raw_query else "")
        text = f"(request-target): {view.method.lower()} {target}\ndate: {date}"
        mac = base64.b64encode(sign(secret, text)).decode()
        return (f'Signature keyId="k1",algorithm="hmac-sha256",'
                f'headers="(request-target) date",signature="{mac}"')

    # -- whole requests --------------------------------------------------------------------

    def draft(self) -> Draft:
        rng = self.rng
        prefix = rng.choice(PREFIXES)
        tail = rng.choice(["x", "x", "x", "", "a/b", "x?q=1", "x?q=1", self.text(30)])
        if rng.random() < 0.1:
            tail = rng.choice(["%2e%2e/admin", "../admin", "//x",
                               "x?api_key=" + self.forged_api_key(),
                               "x?" + "&".join(f"p{i}=v" for i in range(300))])
        path = prefix + tail
        draft = Draft(path=path)
        draft.forged = rng.random() < 0.5
        if draft.forged:
            self._forged_credentials(draft)
        else:
            self._valid_credentials(draft)
        self._junk(draft)
        try:
            if draft.hmac == "rfc9421":
                draft.headers.update(self._rfc9421(draft, HMAC_SECRET))
            elif draft.hmac == "cavage":
                draft.headers["authorization"] = self._cavage(draft, HMAC_SECRET)
        except (CheckError, ComponentError):
            pass  # a request that cannot be read or signed: sent unsigned
        if draft.hmac == "forge":
            self.forged_signature(draft)
        if rng.random() < 0.15:
            self._to_raw(draft)
        return draft

    def _forged_credentials(self, draft: Draft) -> None:
        rng = self.rng
        makers: list[Callable[[], object]] = [
            lambda: draft.headers.__setitem__("x-api-key", self.forged_api_key()),
            lambda: draft.headers.__setitem__("authorization", "Bearer " + self.forged_jwt()),
            lambda: draft.headers.__setitem__("authorization", self.forged_basic()),
            lambda: draft.headers.__setitem__("x-forwarded-client-cert", self.forged_xfcc()),
            lambda: setattr(draft, "certificate", self.forged_peer()),
            lambda: setattr(draft, "hmac", "forge"),  # signed last, over the final request
            lambda: draft.headers.__setitem__("authorization", "Bearer " + self.forged_opaque()),
            lambda: draft.headers.__setitem__("cookie", f"ak={self.forged_cookie_key()}"),
            lambda: draft.headers.__setitem__("authorization", self.text(60)),
        ]
        for make in rng.sample(makers, rng.randint(0, 3)):
            make()

    def _valid_credentials(self, draft: Draft) -> None:
        rng = self.rng
        basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        makers: list[Callable[[], object]] = [
            lambda: draft.headers.__setitem__("x-api-key", API_KEY),
            lambda: draft.headers.__setitem__("authorization", "Bearer " + self.valid_jwt),
            lambda: draft.headers.__setitem__("authorization", "Basic " + basic),
            lambda: draft.headers.__setitem__("x-forwarded-client-cert", self.valid_xfcc),
            lambda: setattr(draft, "certificate", quote(self.leaf_pem, safe="")),
            lambda: setattr(draft, "hmac", rng.choice(["rfc9421", "cavage"])),
            lambda: draft.headers.__setitem__("authorization", "Bearer " + OPAQUE_TOKEN),
            lambda: draft.headers.__setitem__("cookie", f"x=1; ak={API_KEY}"),
        ]
        for make in rng.sample(makers, rng.randint(1, 3)):
            make()

    def _junk(self, draft: Draft) -> None:
        rng = self.rng
        credential_headers = {"authorization", "x-api-key", "cookie", "x-forwarded-client-cert",
                              "signature", "signature-input"}
        for _ in range(rng.choice([0, 0, 1, 2, 5, 20, 70])):
            name = rng.choice([*JUNK_NAMES, self.text(12).lower() or "x"])
            if not draft.forged and name in credential_headers:
                continue  # a valid draft keeps its credentials intact
            draft.headers[name] = self.huge() if rng.random() < 0.03 else rng.choice(
                [self.text(30), ""])
        if rng.random() < 0.3:
            draft.method = rng.choice(["POST", "DELETE", "PUT", "get", "", "PROPFIND",
                                       self.text(8)])
        if rng.random() < 0.2:
            draft.host = rng.choice(["", "API.EXAMPLE.COM:443", "[::1]:8080", "[", self.text(20)])
        if rng.random() < 0.3:
            draft.body = rng.choice([b"{}", bytes(rng.randrange(256) for _ in range(100)),
                                     b"x" * rng.choice([100, 8192, 8193, 100000])])
        if rng.random() < 0.3:
            draft.extensions = {rng.choice(["route", "x", ""]): rng.choice(ROUTE_NAMES)}
            if rng.random() < 0.3:
                draft.extensions[self.text(5)] = self.text(20)
        if rng.random() < 0.2:
            draft.source = rng.choice(["10.66.1.2", "", "not-an-ip", "::1", "999.1.1.1",
                                       "fe80::1%eth0", self.text(15)])

    def _to_raw(self, draft: Draft) -> None:
        """The ``encode_raw_headers`` form: bytes (some not UTF-8), repeated entries."""
        rng = self.rng
        raw: list[tuple[str, bytes]] = [(":path", draft.path.encode("utf-8", "surrogatepass")),
                                        (":method", draft.method.encode("utf-8", "surrogatepass")),
                                        (":authority", draft.host.encode("utf-8",
                                                                         "surrogatepass"))]
        for key, value in draft.headers.items():
            raw.append((key, value.encode("utf-8", "surrogatepass")))
            if rng.random() < 0.1:
                raw.append((key, rng.choice([b"\xff\xfe", b"dup", value.encode()])))
        for _ in range(rng.choice([0, 1, 3])):
            raw.append((rng.choice(JUNK_NAMES[:8]), bytes(rng.randrange(256) for _ in range(20))))
        if draft.forged or rng.random() < 0.5:
            draft.raw = raw
        else:  # keep a valid credential valid: no repeats of its header
            names = [k for k, _ in raw]
            if len(names) == len(set(names)):
                draft.raw = raw


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[IntrospectionStub]:
    with IntrospectionStub() as running_stub:
        running_stub.valid_tokens = frozenset({OPAQUE_TOKEN})
        yield running_stub


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, stub: IntrospectionStub) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("fuzz"), introspection_endpoint=stub.endpoint,
                           limits=LIMITS)


@pytest.fixture
async def snapshot(kinds: AllKinds) -> AsyncIterator[Snapshot]:
    loaded = load_snapshot(kinds.config, Metrics())
    await loaded.start()
    try:
        yield loaded
    finally:
        await loaded.close()


@pytest.fixture
async def wire(kinds: AllKinds) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    server = Server(ServerOptions(str(kinds.config), "127.0.0.1:0", "127.0.0.1:0",
                                  grace_seconds=1))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            yield external_auth_pb2_grpc.AuthorizationStub(channel)
    finally:
        await server.stop()


# -- the run ---------------------------------------------------------------------------------


def _check_invariants(draft: Draft, response: Any, decision: Decision | None,
                      where: str) -> None:
    code = response.status.code
    assert code == 0 or code in STATUSES, f"{where}: unmapped gRPC code {code}"
    if code != 0:
        assert response.denied_response.status.code == STATUSES[code], where
        problem = json.loads(response.denied_response.body)
        assert problem["reason"] == response.status.message, where
        assert problem["reason"] != Reason.INTERNAL_ERROR.value, (
            f"{where}: an exception escaped the check (see the log above)")
        return
    assert decision is not None, where
    if draft.forged:
        assert decision.route == "public" and decision.identity is None, (
            f"{where}: a request with forged credentials was allowed on {decision.route!r} "
            f"as {decision.identity!r}")
    set_upstream = {h.header.key for h in response.ok_response.headers}
    removed = set(response.ok_response.headers_to_remove)
    spoofed = [k for k in draft.headers if k.lower().startswith("x-auth-")]
    for name in spoofed:
        assert name.lower() in set_upstream | removed, f"{where}: client's {name} forwarded"


async def test_fuzz_check(snapshot: Snapshot, kinds: AllKinds,
                          wire: external_auth_pb2_grpc.AuthorizationStub) -> None:
    rng = random.Random(FUZZ_SEED)
    generator = Generator(rng, kinds)
    recorder = Recorder()
    servicer = AuthorizationServicer(Engine(Metrics(), snapshot), recorder)
    started = time.monotonic()
    count = 0
    outcomes: dict[tuple[bool, str], int] = {}
    while time.monotonic() - started < FUZZ_SECONDS:
        draft = generator.draft()
        request = draft.request()
        where = f"EXTAUTHZ_FUZZ_SEED={FUZZ_SEED} request #{count} ({draft!r:.600})"
        recorder.last = None
        response = await servicer.Check(request, None)
        _check_invariants(draft, response, recorder.last, where)
        if count % WIRE_EVERY == 0:
            try:
                over_wire = await wire.Check(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise AssertionError(f"{where}: gRPC error {exc.code()}") from None
            _check_invariants(draft, over_wire, None if over_wire.status.code else
                              recorder.last, where)
        key = (draft.forged, response.status.message or "allow")
        outcomes[key] = outcomes.get(key, 0) + 1
        count += 1
    summary = ", ".join(f"{'forged' if f else 'valid'}/{r}: {n}"
                        for (f, r), n in sorted(outcomes.items()))
    print(f"fuzz: {count} checks in {FUZZ_SECONDS:.0f}s, seed {FUZZ_SEED}: {summary}")
    assert count >= 50, f"only {count} checks in {FUZZ_SECONDS}s"
    # the run reached past the parsers: valid requests were allowed, and many reasons occurred
    assert outcomes.get((False, "allow"), 0) > 0, summary
    assert len({r for _, r in outcomes}) >= 8, summary
