"""Issue 14 findings 4 and 6: one outbound policy for JWKS, discovery, jwks_uri and introspection,
and checks that never wait on a slow IdP longer than the documented bound.

Real local IdPs (tests/support/idp.py): plain http on 127.0.0.1, and https on ``localhost`` with a
certificate from a private CA (tests/support/certs.py). The "attacker" is a second IdP on a plain
http leg serving its own key; a redirect from the https IdP points there.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from extauthz.authn.context import BuildContext
from extauthz.authn.introspection import IntrospectionAuthenticator
from extauthz.authn.jwt import JwtAuthenticator
from extauthz.clock import FixedClock, system_clock
from extauthz.config.loader import load_config
from extauthz.config.schema import IntrospectionSpec, JwtSpec, OutboundSpec, Settings
from extauthz.errors import CheckError, ConfigError, Reason
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundError, OutboundPolicy, is_loopback_host
from extauthz.snapshot import compile_config
from tests.support.builders import make_view
from tests.support.certs import TestCA
from tests.support.idp import FakeIdP, serve_app
from tests.support.tokens import AUDIENCE, bearer, claims, jwks, mint, rsa_key

REPO = Path(__file__).resolve().parents[2]
GOOD = rsa_key("good")
EVIL = rsa_key("evil")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A private CA bundle file and a server context for ``localhost`` issued by it."""
    directory = tmp_path_factory.mktemp("ca")
    ca = TestCA.create("extauthz private IdP CA")
    leaf = ca.issue("localhost", dns=["localhost"], eku=None)
    leaf.write(directory / "idp.pem", directory / "idp.key")
    bundle = ca.write_bundle(directory / "ca.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "idp.pem", directory / "idp.key")
    return bundle, server


@pytest.fixture
async def tls_idp(private_ca: tuple[Path, ssl.SSLContext]) -> AsyncIterator[FakeIdP]:
    async with FakeIdP(jwks(GOOD), ssl_context=private_ca[1]) as server:
        yield server


@pytest.fixture
async def attacker() -> AsyncIterator[FakeIdP]:
    async with FakeIdP(jwks(EVIL)) as server:
        yield server


@pytest.fixture
async def plain_idp() -> AsyncIterator[FakeIdP]:
    async with FakeIdP(jwks(GOOD)) as server:
        yield server


def ctx(policy: OutboundPolicy | None = None, clock: Any = system_clock) -> BuildContext:
    return BuildContext(settings=Settings(), metrics=Metrics(), base_dir=Path("."), clock=clock,
                        outbound=policy or OutboundPolicy())


def jwt_spec(issuer: str, source: dict[str, Any], **overrides: Any) -> JwtSpec:
    return JwtSpec.model_validate({
        "issuer": issuer, "audiences": [AUDIENCE], "algorithms": ["RS256"], "jwks": source,
        "fetch_timeout_seconds": 2, "min_refetch_interval_seconds": 0, **overrides,
    })  # fmt: skip


def policy(**spec: Any) -> OutboundPolicy:
    return OutboundPolicy.from_spec(OutboundSpec.model_validate(spec), Path("."))


async def check(authn: JwtAuthenticator, key: Any, issuer: str, **extra: Any) -> Any:
    token = mint(key, claims(now=time.time(), issuer=issuer, **extra))
    return await authn.authenticate(make_view(headers=bearer(token)))


async def refused(authn: JwtAuthenticator, key: Any, issuer: str, reason: Reason,
                  http: int) -> None:
    from extauthz.decision import from_error

    with pytest.raises(CheckError) as info:
        await check(authn, key, issuer)
    assert info.value.reason is reason, info.value.detail
    decision = from_error(info.value, "r")
    assert decision.http_status == http
    assert decision.grpc_code.name == ("UNAVAILABLE" if http == 503 else "UNAUTHENTICATED")


# ------------------------------------------------------------------------ URL rule (validate)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "[::1]", "localhost", "LOCALHOST."])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "idp.example.com", "localhost.evil.com", "0.0.0.0",
                                  "[::ffff:127.0.0.1]", "127.0.0.1.nip.io"])
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def _config(tmp_path: Path, settings: dict[str, Any], authenticator: dict[str, Any]) -> Path:
    (tmp_path / "secret").write_text("client-secret")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "settings": settings, "authenticators": {"idp": authenticator},
        "routes": [{"name": "r", "match": {"prefix": "/"}, "authn": ["idp"]}],
    }))  # fmt: skip
    return path


JWT_URL = {"jwt": {"issuer": "https://idp.example.com", "audiences": ["a"],
                   "algorithms": ["RS256"], "jwks": {"url": "http://idp.example.com/jwks"}}}
JWT_DISCOVERY = {"jwt": {"issuer": "http://idp.example.com", "audiences": ["a"],
                         "algorithms": ["RS256"], "jwks": {"discovery": True}}}
INTROSPECTION = {"introspection": {"endpoint": "http://idp.example.com/introspect",
                                   "client_id": "c", "client_secret_file": "secret"}}


@pytest.mark.parametrize(
    ("authenticator", "where", "field"),
    [
        (JWT_URL, "authenticators.idp.jwt", "jwks.url"),
        (JWT_DISCOVERY, "authenticators.idp.jwt", "issuer (OIDC discovery)"),
        (INTROSPECTION, "authenticators.idp.introspection", "endpoint"),
    ],
)
def test_validate_refuses_plain_http_off_loopback_with_a_located_error(
    tmp_path: Path, authenticator: dict[str, Any], where: str, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_config(load_config(_config(tmp_path, {}, authenticator)), Metrics())
    issue = info.value.issues[0]  # (the route naming the unbuilt authenticator follows)
    assert issue.path == where
    assert issue.message.startswith(f"{field}: plain http to a non-loopback host")
    assert "allow_plain_http" in issue.message
    # the explicit opt-out
    path = _config(tmp_path, {"outbound": {"allow_plain_http": True}}, authenticator)
    snapshot = compile_config(load_config(path), Metrics())
    assert snapshot.authenticators["idp"]


def test_validate_refuses_an_unusable_ca_bundle(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    path = _config(tmp_path, {"outbound": {"ca_file": "ca.pem"}}, INTROSPECTION)
    with pytest.raises(ConfigError) as info:
        compile_config(load_config(path), Metrics())
    paths = [i.path for i in info.value.issues]
    assert "settings.outbound.ca_file" in paths


def test_credentials_in_an_outbound_url_are_refused() -> None:
    assert OutboundPolicy().url_problem("https://user:pw@idp.example.com/jwks") is not None


# ---------------------------------------------------------------- redirects: the attack of 14.4


async def test_attack_jwks_redirect_to_a_plain_http_key_is_never_trusted(
    tls_idp: FakeIdP, attacker: FakeIdP, private_ca: tuple[Path, ssl.SSLContext]
) -> None:
    tls_idp.redirect_jwks = attacker.jwks_url
    for follow in (False, True):  # default, and even when the operator allows redirects
        pol = policy(ca_file=str(private_ca[0]), follow_redirects=follow)
        authn = JwtAuthenticator.from_spec(
            "idp", jwt_spec(tls_idp.issuer, {"url": tls_idp.jwks_url}), ctx(pol))
        await authn.start()
        try:
            await refused(authn, EVIL, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
            await refused(authn, GOOD, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
        finally:
            await authn.close()
    assert attacker.jwks_hits == 0  # the plain leg was never even asked


async def test_attack_discovery_jwks_uri_redirecting_to_http_is_never_trusted(
    tls_idp: FakeIdP, attacker: FakeIdP, private_ca: tuple[Path, ssl.SSLContext]
) -> None:
    tls_idp.redirect_jwks = attacker.jwks_url  # jwks_uri is https, its answer redirects
    pol = policy(ca_file=str(private_ca[0]), follow_redirects=True)
    authn = JwtAuthenticator.from_spec(
        "idp", jwt_spec(tls_idp.issuer, {"discovery": True}), ctx(pol))
    await authn.start()
    try:
        assert tls_idp.discovery_hits == 1
        await refused(authn, EVIL, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
    finally:
        await authn.close()
    assert attacker.jwks_hits == 0


async def test_attack_discovery_naming_a_plain_http_jwks_uri_is_refused(
    tls_idp: FakeIdP, attacker: FakeIdP, private_ca: tuple[Path, ssl.SSLContext]
) -> None:
    tls_idp.discovery_jwks_uri = attacker.jwks_url
    pol = policy(ca_file=str(private_ca[0]), allow_plain_http=True, follow_redirects=True)
    authn = JwtAuthenticator.from_spec(
        "idp", jwt_spec(tls_idp.issuer, {"discovery": True}), ctx(pol))
    await authn.start()
    try:
        await refused(authn, EVIL, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
    finally:
        await authn.close()
    assert attacker.jwks_hits == 0


async def test_redirects_are_not_followed_by_default_and_followed_when_allowed(
    plain_idp: FakeIdP,
) -> None:
    async with FakeIdP(jwks(GOOD)) as moved:
        plain_idp.redirect_jwks = moved.jwks_url  # http -> http on loopback
        authn = JwtAuthenticator.from_spec(
            "idp", jwt_spec(plain_idp.issuer, {"url": plain_idp.jwks_url}), ctx())
        await authn.start()
        try:
            await refused(authn, GOOD, plain_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
        finally:
            await authn.close()
        assert moved.jwks_hits == 0
        authn = JwtAuthenticator.from_spec(
            "idp", jwt_spec(plain_idp.issuer, {"url": plain_idp.jwks_url}),
            ctx(policy(follow_redirects=True)))
        await authn.start()
        try:
            assert await check(authn, GOOD, plain_idp.issuer)
        finally:
            await authn.close()
        assert moved.jwks_hits == 1


async def test_redirect_chain_longer_than_max_redirects_is_refused(plain_idp: FakeIdP) -> None:
    plain_idp.redirect_jwks = plain_idp.jwks_url  # a loop
    pol = policy(follow_redirects=True, max_redirects=2)
    session = pol.session(2.0)
    try:
        with pytest.raises(OutboundError, match="more than 2 redirects"):
            await pol.fetch(session, "GET", plain_idp.jwks_url, timeout=2, max_bytes=1024)
    finally:
        await session.close()
    assert plain_idp.jwks_hits == 3


async def test_introspection_is_never_redirected(plain_idp: FakeIdP) -> None:
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": plain_idp.jwks_url})

    app = web.Application()
    app.router.add_post("/introspect", moved)
    runner, port = await serve_app(app)
    spec = IntrospectionSpec.model_validate({
        "endpoint": f"http://127.0.0.1:{port}/introspect", "client_id": "c",
        "client_secret_env": "UNUSED"})  # fmt: skip
    authn = IntrospectionAuthenticator("i", spec, "secret", clock=system_clock,
                                       metrics=Metrics(), policy=policy(follow_redirects=True))
    await authn.start()
    try:
        with pytest.raises(CheckError) as info:
            await authn.authenticate(make_view(headers=bearer("opaque-token")))
        assert info.value.reason is Reason.INTROSPECTION_UNAVAILABLE
    finally:
        await authn.close()
        await runner.cleanup()
    assert plain_idp.jwks_hits == 0


# ------------------------------------------------------------------------------ TLS, private CA


async def test_private_ca_needs_the_configured_bundle(
    tls_idp: FakeIdP, private_ca: tuple[Path, ssl.SSLContext]
) -> None:
    spec = jwt_spec(tls_idp.issuer, {"url": tls_idp.jwks_url})
    untrusting = JwtAuthenticator.from_spec("idp", spec, ctx())
    await untrusting.start()
    try:  # the system trust store does not know the private CA: no keys
        await refused(untrusting, GOOD, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
    finally:
        await untrusting.close()
    trusting = JwtAuthenticator.from_spec("idp", spec, ctx(policy(ca_file=str(private_ca[0]))))
    await trusting.start()
    try:
        assert (await check(trusting, GOOD, tls_idp.issuer)).key_id == "good"
    finally:
        await trusting.close()


async def test_another_ca_bundle_does_not_trust_the_idp(
    tls_idp: FakeIdP, tmp_path: Path
) -> None:
    other = TestCA.create("some other CA").write_bundle(tmp_path / "other.pem")
    spec = jwt_spec(tls_idp.issuer, {"url": tls_idp.jwks_url})
    authn = JwtAuthenticator.from_spec("idp", spec, ctx(policy(ca_file=str(other))))
    await authn.start()
    try:
        await refused(authn, GOOD, tls_idp.issuer, Reason.JWKS_UNAVAILABLE, 503)
    finally:
        await authn.close()


# --------------------------------------------------------------------------- proxies (trust_env)


@pytest.fixture
async def proxy() -> AsyncIterator[list[str]]:
    """A forward HTTP proxy on 127.0.0.1; yields the list of URLs it forwarded."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        async with aiohttp.ClientSession() as client, client.get(str(request.url)) as upstream:
            body = await upstream.read()
            return web.Response(body=body, status=upstream.status,
                                content_type="application/json")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", forward)
    runner, port = await serve_app(app)
    seen.append(f"http://127.0.0.1:{port}")  # seen[0]: the proxy's own URL
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_trust_env_routes_fetches_through_https_proxy_settings(
    plain_idp: FakeIdP, proxy: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_url = proxy.pop(0)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    spec = jwt_spec(plain_idp.issuer, {"url": plain_idp.jwks_url})
    for trust_env, via_proxy in ((False, 0), (True, 1)):
        authn = JwtAuthenticator.from_spec("idp", spec, ctx(policy(trust_env=trust_env)))
        await authn.start()
        try:
            assert await check(authn, GOOD, plain_idp.issuer)
        finally:
            await authn.close()
        assert len(proxy) == via_proxy, proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    authn = JwtAuthenticator.from_spec("idp", spec, ctx(policy(trust_env=True)))
    await authn.start()
    try:
        assert await check(authn, GOOD, plain_idp.issuer)
    finally:
        await authn.close()
    assert len(proxy) == 1  # NO_PROXY honoured


# ------------------------------------------------------------- timeouts and bounded refetch (14.6)


def _envoy_timeouts() -> list[float]:
    """The ext_authz call timeout of every shipped Envoy config (gRPC or HTTP service); other
    filters' timeouts (e.g. the rate limit filter's in envoy-ratelimit.yaml) are not its."""
    from extauthz.demo.envoy import _ext_authz_filters

    found: list[float] = []
    for path in sorted((REPO / "deploy" / "envoy").glob("*.yaml")):
        for ext_authz in _ext_authz_filters(yaml.safe_load(path.read_text())):
            config = ext_authz["typed_config"]
            service = config.get("grpc_service") or config["http_service"]["server_uri"]
            found.append(float(str(service["timeout"]).removesuffix("s")))
    return found


def test_outbound_defaults_stay_below_the_shipped_envoy_timeout() -> None:
    envoy = min(_envoy_timeouts())
    assert envoy == 1.0  # every shipped config gives ext_authz 1 s
    jwt = JwtSpec.model_validate({"issuer": "https://i", "audiences": ["a"],
                                  "algorithms": ["RS256"], "jwks": {"url": "https://i/j"}})
    intro = IntrospectionSpec.model_validate({"endpoint": "https://i/x", "client_id": "c",
                                              "client_secret_env": "S"})
    margin = 0.4  # the rest of the check, a loaded machine, Envoy's own hop
    assert jwt.refetch_wait_seconds + margin <= envoy
    assert jwt.fetch_timeout_seconds + margin <= envoy
    assert intro.timeout_seconds + margin <= envoy


async def test_slow_idp_unknown_kid_answers_within_the_bound_and_the_key_arrives_later(
    plain_idp: FakeIdP,
) -> None:
    spec = jwt_spec(plain_idp.issuer, {"url": plain_idp.jwks_url},
                    fetch_timeout_seconds=3, refetch_wait_seconds=0.25)
    authn = JwtAuthenticator.from_spec("idp", spec, ctx())
    await authn.start()
    try:
        rotated = rsa_key("rotated")
        plain_idp.jwks = jwks(GOOD, rotated)
        plain_idp.delay = 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await refused(authn, rotated, plain_idp.issuer, Reason.UNKNOWN_KEY, 401)
        elapsed = loop.time() - started
        assert elapsed < 0.9, elapsed  # 0.25 s bound + scheduling margin, below Envoy's 1 s
        # the known key keeps verifying at once while the fetch is in flight
        started = loop.time()
        assert await check(authn, GOOD, plain_idp.issuer)
        assert loop.time() - started < 0.2
        await asyncio.sleep(1.5)  # the background fetch finished
        assert (await check(authn, rotated, plain_idp.issuer, jti="2")).key_id == "rotated"
        assert plain_idp.jwks_hits == 2  # start + one single-flight refetch
    finally:
        await authn.close()


async def test_concurrent_unknown_kids_on_a_slow_idp_share_one_bounded_fetch(
    plain_idp: FakeIdP,
) -> None:
    spec = jwt_spec(plain_idp.issuer, {"url": plain_idp.jwks_url},
                    fetch_timeout_seconds=3, refetch_wait_seconds=0.2,
                    min_refetch_interval_seconds=30)
    authn = JwtAuthenticator.from_spec("idp", spec, ctx())
    await authn.start()
    try:
        plain_idp.delay = 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        strangers = [rsa_key(f"s{i}") for i in range(3)]
        results = await asyncio.gather(
            *(check(authn, k, plain_idp.issuer, jti=str(i)) for i, k in enumerate(strangers * 5)),
            return_exceptions=True)
        # 0.2 s bound + margin for a loaded machine: still under Envoy's 1 s
        assert loop.time() - started < 0.9
        assert all(isinstance(r, CheckError) and r.reason is Reason.UNKNOWN_KEY for r in results)
        await asyncio.sleep(1.5)
        assert plain_idp.jwks_hits == 2  # one refetch for all fifteen, then rate-limited
    finally:
        await authn.close()


async def test_slow_introspection_is_bounded_by_its_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"active": True, "sub": "x"})

    app = web.Application()
    app.router.add_post("/introspect", slow)
    runner, port = await serve_app(app)
    spec = IntrospectionSpec.model_validate({
        "endpoint": f"http://127.0.0.1:{port}/introspect", "client_id": "c",
        "client_secret_env": "UNUSED"})  # fmt: skip
    authn = IntrospectionAuthenticator("i", spec, "secret", clock=FixedClock(time.time()),
                                       metrics=Metrics())
    await authn.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(CheckError) as info:
            await authn.authenticate(make_view(headers=bearer("opaque-token")))
        assert info.value.reason is Reason.INTROSPECTION_UNAVAILABLE
        assert loop.time() - started < spec.timeout_seconds + 0.3
    finally:
        await authn.close()
        await runner.cleanup()


def test_extauthz_validate_refuses_plain_http_and_names_the_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extauthz.cli import main

    path = _config(tmp_path, {}, JWT_URL)
    assert main(["validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "authenticators.idp.jwt: jwks.url: plain http to a non-loopback host" in err
    path = _config(tmp_path, {"outbound": {"allow_plain_http": True}}, JWT_URL)
    assert main(["validate", "--config", str(path)]) == 0


@pytest.fixture
async def connect_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A CONNECT (HTTPS) proxy on 127.0.0.1: yields its URL and the targets it tunnelled to."""
    tunnels: list[str] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        tunnels.append(target)
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1" if host == "localhost" else host, int(port))
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", tunnels
    finally:
        server.close()
        await server.wait_closed()


async def test_trust_env_tunnels_https_fetches_through_https_proxy(
    tls_idp: FakeIdP, private_ca: tuple[Path, ssl.SSLContext],
    connect_proxy: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy_url, tunnels = connect_proxy
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    spec = jwt_spec(tls_idp.issuer, {"url": tls_idp.jwks_url})
    authn = JwtAuthenticator.from_spec(
        "idp", spec, ctx(policy(trust_env=True, ca_file=str(private_ca[0]))))
    await authn.start()
    try:  # TLS end to end through the tunnel, verified against the private CA
        assert (await check(authn, GOOD, tls_idp.issuer)).key_id == "good"
    finally:
        await authn.close()
    assert tunnels == [f"localhost:{tls_idp.port}"]


async def test_fetch_deadline_holds_when_started_outside_a_task(plain_idp: FakeIdP) -> None:
    """A coroutine stepped by hand from a loop callback runs outside any asyncio task, where
    asyncio.timeout() raises RuntimeError (issue 13.5's class of bug: the HTTP transport once
    drove checks that way). The outbound deadline must not depend on the caller's context."""
    plain_idp.delay = 2.0
    pol = OutboundPolicy()
    session = pol.session(5.0)
    loop = asyncio.get_running_loop()
    coro = pol.fetch(session, "GET", plain_idp.jwks_url, timeout=0.3, max_bytes=1 << 20)
    first: asyncio.Future[Any] = loop.create_future()

    def first_step() -> None:  # a loop callback: no current task here
        try:
            first.set_result(coro.send(None))
        except BaseException as exc:  # e.g. asyncio.timeout()'s RuntimeError
            first.set_exception(exc)

    loop.call_soon(first_step)
    try:
        awaited = await asyncio.wait_for(first, 5)
        t0 = loop.time()
        with pytest.raises(OutboundError, match="timed out"):
            while True:  # go on stepping it the way an asyncio Task would
                if isinstance(awaited, asyncio.Future):
                    await asyncio.wait((awaited,))
                else:
                    await asyncio.sleep(0)
                awaited = coro.send(None)
        assert loop.time() - t0 < 1.5
    finally:
        coro.close()
        await session.close()
