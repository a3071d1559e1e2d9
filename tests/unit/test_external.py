"""AuthZEN rules and metadata lookups (extauthz/external/): templates, the call cache
(TTL, negative cache, single-flight, concurrency bound), configuration errors, the PDP client's
refusals, the decision log and ``check --explain``. The real PDP is tests/e2e/test_e2e_authzen.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from extauthz.cli import main
from extauthz.config.external import PdpSpec
from extauthz.decisionlog import record
from extauthz.errors import ConfigError
from extauthz.explain import Trace
from extauthz.external.authzen import Pdp
from extauthz.external.cache import CallCache, CallFailed
from extauthz.external.lookups import url_segment
from extauthz.external.mapping import RenderError, TemplateError, compile_template
from extauthz.external.metrics import ExternalMetrics
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundPolicy
from extauthz.pipeline import Engine
from tests.support.builders import make_view
from tests.support.configs import compile_text

KEY = "eak_external-test-key-000000000000"
VARS = {"identity": {"subject": "alice", "scopes": ["a", "b"], "claims": {"n": 3}},
        "params": {"doc": "d1"}, "request": {"method": "GET"}, "metadata": {"doc": None}}


def metrics() -> ExternalMetrics:
    return ExternalMetrics(CollectorRegistry())


# ------------------------------------------------------------------------------ templates


def test_whole_reference_keeps_its_type_and_absent_is_null() -> None:
    t = compile_template({"id": "{{ identity.subject }}", "roles": "{{identity.scopes}}",
                          "n": "{{ identity.claims.n }}", "owner": "{{ metadata.doc.owner }}",
                          "fixed": [1, True, None]})
    assert t.render(VARS) == {"id": "alice", "roles": ["a", "b"], "n": 3, "owner": None,
                              "fixed": [1, True, None]}
    assert t.names >= {"identity", "claims", "metadata"}


def test_interpolation_needs_a_present_scalar() -> None:
    assert compile_template("doc:{{ params.doc }}/{{ identity.claims.n }}").render(VARS) == \
        "doc:d1/3"
    with pytest.raises(RenderError, match=r"params\.nope is absent"):
        compile_template("doc:{{ params.nope }}").render(VARS)
    with pytest.raises(RenderError, match="not a scalar"):
        compile_template("x{{ identity.scopes }}").render(VARS)


def test_cel_values_of_any_type() -> None:
    t = compile_template({"cel": '{"roles": identity.scopes, "n": identity.claims.n + 1}'})
    assert t.render(VARS) == {"roles": ["a", "b"], "n": 4}
    with pytest.raises(RenderError, match="CEL"):
        compile_template({"cel": "params.missing"}).render(VARS)


@pytest.mark.parametrize(("spec", "message"), [
    ("{{ secrets.x }}", "unknown variable 'secrets'"),
    ("{{ identity.subject }", "malformed"),
    ({"cel": "1 +"}, "cel"),
])
def test_bad_templates_are_configuration_errors(spec: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_template(spec, "resource")


@pytest.mark.parametrize(("value", "encoded"), [
    ("..", "%2E%2E"), ("../admin", "%2E%2E%2Fadmin"), ("a?b#c", "a%3Fb%23c"),
    ("a b&c=d", "a%20b%26c%3Dd"), ("é", "%C3%A9"), ("%2e", "%252e"),
])
def test_values_in_urls_are_one_encoded_segment(value: str, encoded: str) -> None:
    assert url_segment(value) == encoded


# ------------------------------------------------------------------------------ the cache


def cache(clock: Callable[[], float] | None = None, **kw: Any) -> CallCache:
    args: dict[str, Any] = {"ttl": 5.0, "negative_ttl": 1.0, "max_entries": 100,
                            "max_concurrency": 8, "metrics": metrics(), **kw}
    if clock is not None:
        args["clock"] = clock
    return CallCache("pdp", "t", **args)


async def test_single_flight_one_call_for_concurrent_requests() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "v"

    c = cache()
    assert await asyncio.gather(*(c.get("k", call) for _ in range(20))) == ["v"] * 20
    assert calls == 1


async def test_ttl_and_negative_cache() -> None:
    now = [0.0]
    c = cache(lambda: now[0])
    calls: list[str] = []

    async def ok() -> str:
        calls.append("ok")
        return "v"

    async def failing() -> str:
        calls.append("fail")
        raise CallFailed("error", "down")

    async def not_found() -> None:
        calls.append("none")
        return None

    assert await c.get("a", ok) == "v"
    assert await c.get("a", ok) == "v"  # hit
    now[0] = 5.1
    assert await c.get("a", ok) == "v"  # expired: called again
    for _ in range(2):
        with pytest.raises(CallFailed):
            await c.get("b", failing)  # second one is a negative hit
    assert await c.get("c", not_found) is None
    assert await c.get("c", not_found) is None
    assert calls == ["ok", "ok", "fail", "none"]
    now[0] = 6.2  # past the negative TTL
    with pytest.raises(CallFailed):
        await c.get("b", failing)
    assert calls[-1] == "fail"


async def test_concurrency_is_bounded() -> None:
    running = peak = 0

    async def call() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return 1

    c = cache(max_concurrency=2)
    await asyncio.gather(*(c.get(str(i), call) for i in range(8)))
    assert peak == 2


async def test_entries_are_bounded_and_a_gave_up_waiter_does_not_cancel_the_call() -> None:
    c = cache(max_entries=3)

    async def value() -> int:
        return 1

    for i in range(10):
        await c.get(str(i), value)
    assert len(c) == 3

    done = asyncio.Event()

    async def slow() -> int:
        await asyncio.sleep(0.1)
        done.set()
        return 2

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await c.get("slow", slow)
    await asyncio.wait_for(done.wait(), 2)
    assert await c.get("slow", slow) == 2  # answered from the cache


# ------------------------------------------------------------------ configuration errors

BASE = f"""
authenticators:
  keys: {{api_key: {{}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [user]}}]
"""


@pytest.mark.parametrize(("extra", "where", "message"), [
    ("settings: {pdps: {p: {url: 'http://pdp.example.com'}}}", "settings.pdps.p",
     "plain http to a non-loopback host"),
    ("settings: {pdps: {p: {url: 'https://x', timeout_seconds: 0.5}}}",
     "settings.pdps.p.timeout_seconds", "less than or equal to 0.45"),
    ("settings: {lookups: {l: {http: {url: 'https://{{ params.host }}/x'}}}}",
     "settings.lookups.l", "scheme and host must be literal"),
    ("settings: {lookups: {l: {http: {url: 'https://x/{{ env.HOME }}'}}}}",
     "settings.lookups.l", "unknown variable 'env'"),
    ("settings: {lookups: {l: {http: {url: 'https://x/', body: {a: 1}}}}}",
     "settings.lookups.l.http", "only a POST has a body"),
    ("routes: [{name: r, match: {prefix: /}, authn: [keys], "
     "authz: {rules: [{authzen: {pdp: nope, resource: {type: t, id: x}}}]}}]",
     "routes[0].authz.rules[0].authzen.pdp", "unknown PDP 'nope'"),
    ("routes: [{name: r, match: {prefix: /}, authn: [keys], authz: {metadata: [nope]}}]",
     "routes[0].authz.metadata[0]", "unknown lookup 'nope'"),
    ("settings: {pdps: {p: {url: 'https://x'}}}\n"
     "routes: [{name: r, match: {prefix: /}, authn: [keys], "
     "authz: {rules: [{authzen: {pdp: p}}]}}]",
     "routes[0].authz.rules[0].authzen", "resource: required"),
    ("routes: [{name: r, match: {prefix: /}, authn: [keys], "
     "authz: {rules: [{metadata: {path: doc.owner, exists: true}}]}}]",
     "routes[0].authz.rules[0].metadata.path", "'doc' is not a lookup of this route"),
    ("settings: {lookups: {doc: {http: {url: 'https://x/'}}}}\n"
     "routes: [{name: r, match: {prefix: /}, authn: [keys], "
     "authz: {metadata: [doc], rules: [{equal: {metadata: other.x, identity: subject}}]}}]",
     "routes[0].authz.rules[0].equal.metadata", "'other' is not a lookup of this route (doc)"),
])
def test_configuration_errors_are_located(tmp_path: Path, extra: str, where: str,
                                          message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_text(tmp_path, BASE + extra)
    text = str(info.value)
    assert where in text and message in text, text


# ------------------------------------------------------------------- PDP client refusals


class FakePdp:
    """An AuthZEN server whose answers a test sets."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, {"decision": True})
        self.discovery: dict[str, Any] = {}
        self.seen: list[Any] = []

    def app(self) -> web.Application:
        async def evaluate(request: web.Request) -> web.Response:
            self.seen.append(await request.json())
            status, body = self.answer
            if status in (307, 308):
                return web.Response(status=status, headers={"location": "/elsewhere"})
            return web.json_response(body, status=status)

        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(self.discovery)

        app = web.Application()
        app.router.add_post("/access/v1/evaluation", evaluate)
        app.router.add_post("/access/v1/evaluations", evaluate)
        app.router.add_post("/elsewhere", evaluate)
        app.router.add_get("/.well-known/authzen-configuration", discovery)
        return app


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakePdp, str]]:
    pdp = FakePdp()
    runner = web.AppRunner(pdp.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield pdp, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client(url: str, **kw: Any) -> Pdp:
    return Pdp("fake", PdpSpec(url=url, negative_ttl_seconds=0, cache_ttl_seconds=0, **kw),
               OutboundPolicy(follow_redirects=True), metrics())


@pytest.mark.parametrize("answer", [
    (200, {"decision": "true"}), (200, {"decision": 1}), (200, {}), (200, [True]),
    (500, {"decision": True}), (403, {"decision": True}),
    (307, None),  # a POST is never redirected, whatever the settings
])
async def test_anything_but_a_boolean_true_is_not_an_allow(
        fake: tuple[FakePdp, str], answer: tuple[int, Any]) -> None:
    server, url = fake
    server.answer = answer
    pdp = client(url)
    try:
        with pytest.raises(CallFailed):
            await pdp.evaluate({"subject": {"type": "user", "id": "a"}})
    finally:
        await pdp.close()


async def test_a_batch_answer_of_the_wrong_length_is_refused(fake: tuple[FakePdp, str]) -> None:
    server, url = fake
    server.answer = (200, {"evaluations": [{"decision": True}]})
    pdp = client(url)
    try:
        with pytest.raises(CallFailed):
            await pdp.evaluate_many({"evaluations": [{}, {}]}, 2)
        server.answer = (200, {"evaluations": [{"decision": True}, {"decision": False}]})
        assert [a for a, _ in await pdp.evaluate_many({"evaluations": [{}, {}]}, 2)] == [
            True, False]
    finally:
        await pdp.close()


@pytest.mark.parametrize("doc", [
    {"policy_decision_point": "https://other.example.com"},  # names another PDP
    {"access_evaluation_endpoint": "http://pdp.example.com/access/v1/evaluation"},  # plain http
    {},
])
async def test_discovery_is_checked(fake: tuple[FakePdp, str], doc: dict[str, Any]) -> None:
    server, url = fake
    server.discovery = {"policy_decision_point": url, **doc}
    pdp = client(url, discovery=True)
    try:
        with pytest.raises(CallFailed):
            await pdp.evaluate({})
        server.discovery = {"policy_decision_point": url,
                            "access_evaluation_endpoint": url + "/access/v1/evaluation"}
        pdp2 = client(url, discovery=True)
        assert (await pdp2.evaluate({}))[0] is True
        await pdp2.close()
    finally:
        await pdp.close()


# ------------------------------------------------------- decision log and check --explain


def config_with(url: str) -> str:
    return BASE + f"""
settings:
  pdps:
    fake: {{url: "{url}"}}
routes:
- name: docs
  match: {{template: "/docs/{{doc}}"}}
  authn: [keys]
  authz:
    rules:
    - authzen:
        pdp: fake
        subject: {{type: user, id: "{{{{ identity.subject }}}}",
                   properties: {{roles: "{{{{ identity.scopes }}}}"}}}}
        action: {{name: "{{{{ request.method }}}}"}}
        resource: {{type: document, id: "{{{{ params.doc }}}}"}}
"""


async def test_decision_log_and_trace_carry_the_pdp_answer(
        fake: tuple[FakePdp, str], tmp_path: Path) -> None:
    server, url = fake
    server.answer = (200, {"decision": False, "context": {"reason": "not the owner"}})
    snapshot = compile_text(tmp_path, config_with(url))
    engine = Engine(Metrics(), snapshot)
    try:
        view = make_view("/docs/d7", headers={"x-api-key": KEY})
        trace = Trace()
        decision = await engine.check(view, trace)
        assert decision.http_status == 403 and decision.rule == "rules[0]"
        assert decision.grpc_code.name == "PERMISSION_DENIED"
        assert server.seen[-1] == {
            "subject": {"type": "user", "id": "alice", "properties": {"roles": ["user"]}},
            "action": {"name": "GET"}, "resource": {"type": "document", "id": "d7"}}
        rec = record(view, decision, 0.001)
        assert rec["pdp"] == [{"pdp": "fake", "rule": "rules[0]", "decision": False,
                               "context": '{"reason":"not the owner"}'}]
        [rule] = trace.rules
        assert rule.kind == "authzen" and rule.result == "fail"
        assert "PDP fake: decision false" in rule.detail and "not the owner" in rule.detail
        server.answer = (200, {"decision": True})
        allowed = await engine.check(make_view("/docs/d8", headers={"x-api-key": KEY}))
        assert allowed.http_status == 200
        assert allowed.pdp == ({"pdp": "fake", "rule": "rules[0]", "decision": True},)
    finally:
        await snapshot.close()


def test_cli_check_explain_shows_the_pdp_decision(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    server = FakePdp()
    server.answer = (200, {"decision": False, "context": {"reason_admin": {"en": "no"}}})

    async def scenario() -> int:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = tmp_path / "c.yaml"
        config.write_text(config_with(f"http://127.0.0.1:{port}"))
        request = tmp_path / "r.yaml"
        request.write_text(yaml.safe_dump({"path": "/docs/d1", "headers": {"x-api-key": KEY}}))
        try:
            # the CLI runs its own event loop: give it a thread
            return await asyncio.to_thread(main, ["check", "--config", str(config),
                                                  "--request", str(request), "--explain"])
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["http_status"] == 403 and out["rule"] == "rules[0]"
    [rule] = out["explain"]["rules"]
    assert rule["kind"] == "authzen" and "PDP fake: decision false" in rule["detail"]
    assert "reason_admin" in rule["detail"]
    assert KEY not in json.dumps(out)


async def test_a_pdp_that_cannot_answer_is_503_and_logged(tmp_path: Path) -> None:
    snapshot = compile_text(tmp_path, config_with("http://127.0.0.1:9"))  # discard port: refused
    engine = Engine(Metrics(), snapshot)
    try:
        view = make_view("/docs/d1", headers={"x-api-key": KEY})
        trace = Trace()
        decision = await engine.check(view, trace)
        assert (decision.http_status, decision.grpc_code.name, decision.reason.value) == (
            503, "UNAVAILABLE", "dependency_unavailable")
        [answer] = decision.pdp
        assert answer["decision"] is False and answer["fallback"] == "fail_closed"
        assert answer["error"] in ("error", "timeout")
        assert any("PDP fake could not answer" in note for note in trace.notes)
    finally:
        await snapshot.close()


def test_the_configuration_in_the_docs_compiles(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "authzen.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    data["authenticators"] = {"idp": {"api_key": {}}}
    snapshot = compile_text(tmp_path, yaml.safe_dump(data))
    [route] = snapshot.routes.routes
    assert route.policy.external is not None
    assert [lk.name for lk in route.policy.external.lookups] == ["doc"]


async def test_calls_queued_past_the_deadline_are_dropped_not_piled_up() -> None:
    c = cache(max_concurrency=1, slot_timeout=0.05)

    async def hung() -> int:
        await asyncio.sleep(0.3)
        return 1

    first = asyncio.ensure_future(c.get("a", hung))
    await asyncio.sleep(0.01)
    with pytest.raises(CallFailed) as info:
        await c.get("b", hung)  # no slot within 50 ms
    assert info.value.result == "overloaded"
    assert await first == 1


async def test_userinfo_never_follows_a_redirect_with_the_callers_token() -> None:
    from extauthz.config.external import LookupSpec
    from extauthz.external.lookups import Lookup

    hits: list[str] = []

    async def userinfo(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/userinfo":
            raise web.HTTPFound("/elsewhere")
        return web.json_response({"sub": "alice"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", userinfo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    lookup = Lookup("profile", LookupSpec(userinfo={"url": f"http://127.0.0.1:{port}/userinfo"}),
                    OutboundPolicy(follow_redirects=True), metrics())
    view = make_view("/x", headers={"authorization": "Bearer tok-123"})
    try:
        with pytest.raises(CallFailed):
            await lookup.resolve({"identity": {"subject": "alice"}}, view)
        assert hits == ["/userinfo"]  # the token never went to /elsewhere
        with pytest.raises(CallFailed, match="no bearer token"):
            await lookup.resolve({"identity": {"subject": "alice"}}, make_view("/x"))
    finally:
        await lookup.close()
        await runner.cleanup()


async def test_expired_answers_are_swept_so_memory_follows_live_answers() -> None:
    now = [0.0]
    c = cache(lambda: now[0], max_entries=10_000)

    async def value() -> int:
        return 1

    for i in range(200):
        await c.get(f"old{i}", value)
    now[0] = 10.0  # all 200 expired, never asked again
    for i in range(56):
        await c.get(f"new{i}", value)  # the 256th store sweeps
    assert len(c) == 56


async def test_a_reload_keeps_the_cached_pdp_answers(fake: tuple[FakePdp, str],
                                                     tmp_path: Path) -> None:
    server, url = fake
    text = config_with(url).replace(f'url: "{url}"', f'url: "{url}", cache_ttl_seconds: 60')
    first = compile_text(tmp_path, text)
    second = compile_text(tmp_path, text)
    changed = compile_text(tmp_path, text.replace("cache_ttl_seconds: 60",
                                                  "cache_ttl_seconds: 30"))
    view = make_view("/docs/d1", headers={"x-api-key": KEY})
    try:
        assert (await Engine(Metrics(), first).check(view)).http_status == 200
        asked = len(server.seen)
        second.adopt_external_answers(first)
        changed.adopt_external_answers(first)
        assert (await Engine(Metrics(), second).check(view)).http_status == 200
        assert len(server.seen) == asked  # answered from the adopted cache
        assert (await Engine(Metrics(), changed).check(view)).http_status == 200
        assert len(server.seen) == asked + 1  # settings changed: not adopted
    finally:
        for snapshot in (first, second, changed):
            await snapshot.close()


async def test_a_template_that_cannot_render_fails_the_rule_even_with_on_error_allow(
        fake: tuple[FakePdp, str], tmp_path: Path) -> None:
    server, url = fake
    text = config_with(url).replace(
        'resource: {type: document, id: "{{ params.doc }}"}',
        'resource: {type: document, id: "doc:{{ identity.claims.tenant }}"}\n'
        "        on_error: allow")
    assert "on_error: allow" in text
    snapshot = compile_text(tmp_path, text)
    try:
        decision = await Engine(Metrics(), snapshot).check(
            make_view("/docs/d1", headers={"x-api-key": KEY}))
        assert (decision.http_status, decision.grpc_code.name, decision.reason.value) == (
            403, "PERMISSION_DENIED", "forbidden")
        assert server.seen == []  # the PDP was never asked
        assert decision.pdp[0]["error"].startswith("mapping:")
    finally:
        await snapshot.close()
