"""AuthZEN rules and metadata lookups through the real Envoy, on both transports, against a REAL
Cerbos PDP (the npm package's binary, started here) — docs/authzen.md.

client -> Envoy (gRPC ext_authz: deploy/envoy/envoy.yaml; HTTP ext_authz:
envoy-http-authz.yaml) -> extauthz -> [document service lookup] -> Cerbos AuthZEN -> echo.

The Cerbos policies are docs/examples/authzen/cerbos/*.yaml (the files the docs show). The
document service (owner of each document, a UserInfo endpoint, a PDP that hangs) is a small
in-process app. The interop replay sends the AuthZEN "Todo" interop decisions to Cerbos
through extauthz's own PDP client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from extauthz.config.external import PdpSpec
from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import REPO_ROOT
from extauthz.demo.idp import DemoIdP
from extauthz.demo.procs import free_port
from extauthz.external.authzen import Pdp
from extauthz.external.metrics import ExternalMetrics
from extauthz.outbound import OutboundPolicy
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.e2e.test_e2e_shadow import decision_lines
from tests.support.cerbos import CerbosServer, cerbos_binary
from tests.support.envoy_body import BodyStack, start_http_stack
from tests.support.processes import Stack, render_policies, write_config

pytestmark = pytest.mark.skipif(cerbos_binary() is None,
                                reason="Cerbos not installed (scripts/bootstrap needs npm)")

CERBOS_POLICIES = REPO_ROOT / "docs" / "examples" / "authzen" / "cerbos"
INTEROP = Path(__file__).parent / "data" / "authzen_interop_todo.json"
OWNERS = {"d1": "alice", "d2": "bob", "cached": "alice"}
#: requests the document service answered, by path
HITS: dict[str, int] = {}


def _unverified_sub(header: str) -> str:
    payload = header.split(" ", 1)[1].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


def _service() -> web.Application:
    async def document(request: web.Request) -> web.Response:
        doc = request.match_info["doc"]
        HITS["doc:" + doc] = HITS.get("doc:" + doc, 0) + 1
        if doc.startswith("burst"):  # slow enough for concurrent requests to overlap
            await asyncio.sleep(0.3)
            return web.json_response({"id": doc, "owner": "alice"})
        if doc not in OWNERS:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"id": doc, "owner": OWNERS[doc]})

    async def userinfo(request: web.Request) -> web.Response:
        HITS["/userinfo"] = HITS.get("/userinfo", 0) + 1
        sub = _unverified_sub(request.headers.get("authorization", "Bearer x.e30.x"))
        if sub == "eve":  # a UserInfo answer about somebody else must be refused
            return web.json_response({"sub": "alice", "department": "eng"})
        return web.json_response({"sub": sub, "department": "eng" if sub == "alice" else "ops"})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({"decision": True})

    async def directory(request: web.Request) -> web.Response:
        # the interop scenario's user directory, as the PEP's lookup sees it
        found = json.loads(INTEROP.read_text())["directory"].get(request.match_info["sub"])
        if found is None:
            return web.json_response({}, status=404)
        return web.json_response(found)

    app = web.Application()
    app.router.add_get("/directory/{sub}", directory)
    app.router.add_get("/documents/{doc}", document)
    app.router.add_get("/userinfo", userinfo)
    app.router.add_post("/slow/access/v1/evaluation", hang)
    return app


@pytest.fixture(scope="module")
def service() -> Iterator[BackgroundApp]:
    app = BackgroundApp(_service, name="documents").start()
    yield app
    app.close()


@pytest.fixture(scope="module")
def cerbos(e2e_dir: Path) -> Iterator[CerbosServer]:
    policies = e2e_dir / "cerbos-policies"
    shutil.copytree(CERBOS_POLICIES, policies)
    server = CerbosServer(policies, e2e_dir / "cerbos").start()
    yield server
    server.stop()


def _subject(roles: str = "{{ identity.scopes }}") -> dict[str, Any]:
    return {"type": "user", "id": "{{ identity.subject }}", "properties": {"roles": roles}}


RESOURCE = {"type": "document", "id": "{{ params.doc_id }}",
            "properties": {"owner": "{{ metadata.doc.owner }}"}}


def _route(name: str, template: str, rules: list[dict[str, Any]],
           metadata: tuple[str, ...] = ("doc",)) -> dict[str, Any]:
    return {"name": name, "match": {"template": template}, "authn": ["demo-idp"],
            "authz": {"metadata": list(metadata), "rules": rules}}


def _authzen(pdp: str = "cerbos", **extra: Any) -> dict[str, Any]:
    return {"authzen": {"pdp": pdp, "subject": _subject(), "action": {"name": "read"},
                        "resource": RESOURCE, **extra}}


#: the interop gateway scenario's routes: (route name, match, route template sent as resource id)
GATEWAY = [
    ("gw-user", {"template": "/users/{userId}"}, "/users/{userId}"),
    ("gw-todos", {"path": "/todos"}, "/todos"),
    ("gw-todo", {"template": "/todos/{todoId}"}, "/todos/{todoId}"),
]
#: a concrete path for each route template
GATEWAY_PATHS = {"/users/{userId}": "/users/beth@the-smiths.com", "/todos": "/todos",
                 "/todos/{todoId}": "/todos/7240d0db-8ff0-41ec-98b2-34a096273b9f"}


def _gateway_route(name: str, match: dict[str, str], template: str) -> dict[str, Any]:
    """The interop gateway PEP: who (token subject + directory lookup), what (the method),
    which route (the template, as the AuthZEN resource)."""
    return {"name": name, "match": match, "authn": ["demo-idp"], "authz": {
        "metadata": ["directory"],
        "rules": [{"authzen": {
            "pdp": "cerbos",
            "subject": {"type": "identity", "id": "{{ identity.subject }}",
                        "properties": "{{ metadata.directory }}"},
            "action": {"name": "{{ request.method }}"},
            "resource": {"type": "route", "id": template}}}]}}


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP, cerbos: CerbosServer,
                    service: BackgroundApp) -> Path:
    main = render_policies(e2e_dir / "policies", issuer=idp.issuer)
    data = yaml.safe_load(main.read_text())
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    data.setdefault("settings", {}).update({
        "pdps": {
            "cerbos": {"url": cerbos.url, "discovery": True, "timeout_seconds": 0.4},
            "down": {"url": down, "negative_ttl_seconds": 0},
            "slow": {"url": service.base_url + "/slow", "timeout_seconds": 0.2},
        },
        "lookups": {
            "doc": {"http": {"url": service.base_url + "/documents/{{ params.doc_id }}"},
                    "cache_ttl_seconds": 30},
            "profile": {"userinfo": {"url": service.base_url + "/userinfo"}},
            "directory": {"http": {"url": service.base_url
                                   + "/directory/{{ identity.subject }}"}},
            "gone": {"http": {"url": down + "/documents/{{ params.doc_id }}"}},
            "doc-nocache": {"http": {"url": service.base_url + "/documents/{{ params.doc_id }}"},
                            "cache_ttl_seconds": 0, "negative_ttl_seconds": 0,
                            "timeout_seconds": 0.45},
        },
    })
    batch = [{"action": {"name": "read"}}, {"action": {"name": "share"}},
             {"action": {"name": "delete"}}]
    routes = [
        _route("az-doc", "/az/docs/{doc_id}", [_authzen()]),
        _route("az-all", "/az/all/{doc_id}", [_authzen(evaluations=batch)]),
        _route("az-any", "/az/any/{doc_id}", [_authzen(evaluations=batch, combine="any")]),
        _route("az-nocache", "/az/nocache/{doc_id}",
               [{"metadata": {"path": "doc-nocache.owner", "equals": "alice"}}],
               metadata=("doc-nocache",)),
        _route("az-owner", "/az/owner/{doc_id}", [
            {"equal": {"metadata": "doc.owner", "identity": "subject"}},
            {"cel": "metadata.doc.owner == identity.subject"}]),
        _route("az-down", "/az/down/{doc_id}", [_authzen("down")]),
        _route("az-down-deny", "/az/down-deny/{doc_id}", [_authzen("down", on_error="deny")]),
        _route("az-down-allow", "/az/down-allow/{doc_id}",
               [_authzen("down", on_error="allow")]),
        _route("az-slow", "/az/slow/{doc_id}", [_authzen("slow")]),
        _route("az-gone", "/az/gone/{doc_id}", [{"cel": "true"}], metadata=("gone",)),
        _route("az-profile", "/az/profile/{doc_id}",
               [{"cel": 'metadata.profile.department == "eng"'}], metadata=("profile",)),
    ]
    routes += [_gateway_route(name, match, template) for name, match, template in GATEWAY]
    (main.parent / "routes.d" / "authzen.yaml").write_text(yaml.safe_dump({"routes": routes}))
    return write_config(main, data)


@pytest.fixture(scope="module")
def http_stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path,
               stack: Stack) -> Iterator[Stack]:
    running = start_http_stack(extauthz_config, echo_port=echo.port, log_dir=e2e_dir / "http",
                               body=False)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=["grpc", "http"])
def wire(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """The same configuration behind each ext_authz transport."""
    if request.param == "grpc":
        return stack
    running: Stack = request.getfixturevalue("http_stack")
    return running


def metric(stack: Stack, family: str, **labels: str) -> float:
    """A sample of ``family`` with these labels (``target`` stands for the ``name`` label)."""
    want = {("name" if k == "target" else k): v for k, v in labels.items()}
    for line in stack.metrics().splitlines():
        if line.startswith(family + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in want.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_unavailable(wire: Stack, r: Any) -> None:
    """503 ``dependency_unavailable``. Over the HTTP transport a 5xx from extauthz is an error
    to Envoy: the client gets ``status_on_error`` (503) without extauthz's body."""
    if isinstance(wire, BodyStack):
        assert r.status == 503 and r.text == "", (r.status, r.text[:200])
    else:
        assert_denied(r, 503, "dependency_unavailable")


def bearer(idp: DemoIdP, sub: str, *scopes: str) -> dict[str, str]:
    return {"authorization": f"Bearer {idp.mint(sub, scopes=scopes or ('user',))}"}


# ------------------------------------------------------------------------- allow and deny


def test_pdp_allows_the_owner_and_the_decision_is_logged(wire: Stack, idp: DemoIdP) -> None:
    seen = upstream_headers(wire.get("/az/docs/d1?probe=1", bearer(idp, "alice")))
    assert seen["x-auth-subject"] == "alice"
    [rec] = decision_lines(wire, "/az/docs/d1?probe=")
    assert rec["outcome"] == "allow"
    assert rec["pdp"] == [{"pdp": "cerbos", "rule": "rules[0]", "decision": True}]


def test_pdp_denies_another_user_403_and_logs_why(wire: Stack, idp: DemoIdP) -> None:
    r = wire.get("/az/docs/d1?deny_probe=1", bearer(idp, "bob"))
    assert_denied(r, 403, "forbidden")
    [rec] = decision_lines(wire, "/az/docs/d1?deny_probe=")
    assert rec["outcome"] == "deny" and rec["rule"] == "rules[0]"
    assert rec["pdp"] == [{"pdp": "cerbos", "rule": "rules[0]", "decision": False}]


def test_admin_role_from_token_scopes_is_allowed(wire: Stack, idp: DemoIdP) -> None:
    seen = upstream_headers(wire.get("/az/docs/d2", bearer(idp, "carol", "admin")))
    assert seen["x-auth-subject"] == "carol"


def test_path_parameter_cannot_escape_the_lookup_url(wire: Stack, idp: DemoIdP) -> None:
    # a parameter holding "..", "?" or "#" stays ONE path segment of the lookup URL: the
    # document service sees it as the document id, exactly as the path parameter holds it
    # (unknown -> 404 -> null owner -> deny)
    before = HITS.get("doc:..%3Fx=1%23y", 0)
    r = wire.get("/az/docs/..%3Fx=1%23y", bearer(idp, "alice"))
    assert_denied(r, 403, "forbidden")
    assert HITS.get("doc:..%3Fx=1%23y", 0) == before + 1, HITS


def test_unknown_document_is_null_metadata_and_a_deny(wire: Stack, idp: DemoIdP) -> None:
    assert_denied(wire.get("/az/docs/nope", bearer(idp, "alice")), 403, "forbidden")


# ---------------------------------------------------------------------------------- batch


def test_batched_evaluations_all_and_any(wire: Stack, idp: DemoIdP) -> None:
    owner = bearer(idp, "alice")
    # read and share are allowed for the owner, delete is not: all -> 403, any -> 200
    r = wire.get("/az/all/d1", owner)
    assert_denied(r, 403, "forbidden")
    upstream_headers(wire.get("/az/any/d1", owner))
    admin = bearer(idp, "root", "admin")  # read and delete, not share
    assert_denied(wire.get("/az/all/d2", admin), 403, "forbidden")
    upstream_headers(wire.get("/az/any/d2", admin))
    assert_denied(wire.get("/az/any/d2", bearer(idp, "alice")), 403, "forbidden")


# ---------------------------------------------------------------- lookups, ReBAC, caching


def test_rebac_owner_from_a_service_in_rules_and_cel(wire: Stack, idp: DemoIdP) -> None:
    upstream_headers(wire.get("/az/owner/d2", bearer(idp, "bob")))
    assert_denied(wire.get("/az/owner/d2", bearer(idp, "alice")), 403, "forbidden")


def test_lookup_answers_are_cached(wire: Stack, idp: DemoIdP) -> None:
    token = bearer(idp, "alice")
    upstream_headers(wire.get("/az/docs/cached", token))
    hits = HITS["doc:cached"]
    for _ in range(3):
        upstream_headers(wire.get("/az/docs/cached", token))
    assert HITS["doc:cached"] == hits  # 30 s TTL: served from the cache
    assert metric(wire, "extauthz_external_cache_total", kind="lookup", target="doc",
                  result="hit") >= 3
    assert metric(wire, "extauthz_external_calls_total", kind="pdp", target="cerbos",
                  result="ok") >= 1


def test_concurrent_requests_share_one_lookup_call(wire: Stack, idp: DemoIdP) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # a lookup without any cache: only single-flight can make eight overlapping checks (the
    # service takes 0.3 s) cost fewer than eight calls
    doc = f"burst{len(HITS)}"
    token = bearer(idp, "alice")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: wire.get(f"/az/nocache/{doc}", token).status,
                                 range(8)))
    assert statuses == [200] * 8
    assert HITS["doc:" + doc] < 8, HITS["doc:" + doc]
    assert metric(wire, "extauthz_external_cache_total", kind="lookup", target="doc-nocache",
                  result="shared") >= 1


def test_userinfo_with_the_callers_token(wire: Stack, idp: DemoIdP) -> None:
    upstream_headers(wire.get("/az/profile/x", bearer(idp, "alice")))
    assert_denied(wire.get("/az/profile/x", bearer(idp, "dave")), 403, "forbidden")


def test_userinfo_about_another_subject_fails_closed(wire: Stack, idp: DemoIdP) -> None:
    assert_unavailable(wire, wire.get("/az/profile/x", bearer(idp, "eve")))


# ------------------------------------------------------------------- failure and fallback


def test_pdp_down_fails_closed_with_503(wire: Stack, idp: DemoIdP) -> None:
    assert_unavailable(wire, wire.get("/az/down/d1", bearer(idp, "alice")))


def test_pdp_down_documented_fallbacks(wire: Stack, idp: DemoIdP) -> None:
    assert_denied(wire.get("/az/down-deny/d1", bearer(idp, "alice")), 403, "forbidden")
    upstream_headers(wire.get("/az/down-allow/d1", bearer(idp, "alice")))
    assert metric(wire, "extauthz_external_fallbacks_total", kind="pdp", target="down",
                  action="allow") >= 1


def test_hung_pdp_times_out_before_envoy_does(wire: Stack, idp: DemoIdP) -> None:
    # the PDP's 0.2 s deadline answers 503 well before Envoy's own 1 s ext_authz timeout
    # (which would answer 403 on gRPC, after a second)
    token = bearer(idp, "alice")
    started = time.monotonic()
    r = wire.get("/az/slow/d1", token)
    elapsed = time.monotonic() - started
    assert_unavailable(wire, r)
    assert elapsed < 0.9, elapsed
    assert metric(wire, "extauthz_external_calls_total", kind="pdp", target="slow",
                  result="timeout") >= 1


def test_lookup_down_fails_closed_with_503(wire: Stack, idp: DemoIdP) -> None:
    assert_unavailable(wire, wire.get("/az/gone/d1", bearer(idp, "alice")))


def test_missing_credential_never_reaches_the_pdp(wire: Stack) -> None:
    before = metric(wire, "extauthz_external_calls_total", kind="pdp", target="cerbos",
                    result="ok")
    r = wire.get("/az/docs/d1")
    assert_denied(r, 401, "missing_credential")
    assert metric(wire, "extauthz_external_calls_total", kind="pdp", target="cerbos",
                  result="ok") == before


# ------------------------------------------------------------------- interop (Todo app)


def test_authzen_interop_todo_decisions_against_cerbos(cerbos: CerbosServer) -> None:
    """The interop "Todo" decisions, each asked through extauthz's PDP client (discovery on).

    The interop PDPs hold the user directory themselves; Cerbos is stateless, so the PEP adds
    each subject's roles and email (the directory of the scenario) as subject properties — in
    extauthz that is a metadata lookup feeding the ``subject`` template.
    """
    data = json.loads(INTEROP.read_text())
    directory = data["directory"]

    async def run() -> list[tuple[dict[str, Any], bool, bool]]:
        pdp = Pdp("cerbos", PdpSpec(url=cerbos.url, discovery=True, timeout_seconds=0.45),
                  OutboundPolicy(), ExternalMetrics(__import__("prometheus_client")
                                                    .CollectorRegistry()))
        out = []
        try:
            for case in data["evaluation"]:
                request = json.loads(json.dumps(case["request"]))
                subject = request["subject"]
                subject["properties"] = directory[subject["id"]]
                allowed, _ = await pdp.evaluate(request)
                out.append((case["request"], case["expected"], allowed))
        finally:
            await pdp.close()
        return out

    results = asyncio.run(run())
    assert len(results) == 40
    wrong = [(req, expected) for req, expected, got in results if got != expected]
    assert wrong == []


def test_check_explain_shows_cerbos_decision(extauthz_config: Path, idp: DemoIdP,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from extauthz.cli import main

    token = idp.mint("bob", scopes=["user"])
    request = tmp_path / "r.yaml"
    request.write_text(yaml.safe_dump({"path": "/az/docs/d1",
                                       "headers": {"authorization": f"Bearer {token}"}}))
    code = main(["check", "--config", str(extauthz_config), "--request", str(request),
                 "--explain"])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["http_status"] == 403 and out["rule"] == "rules[0]"
    [rule] = out["explain"]["rules"]
    assert rule["kind"] == "authzen" and rule["result"] == "fail"
    assert rule["detail"] == "PDP cerbos: decision false"
    assert "metadata doc: ok" in out["explain"]["notes"]
    assert token not in json.dumps(out)


def test_authzen_interop_gateway_decisions_through_envoy(wire: Stack, idp: DemoIdP) -> None:
    """The interop API-gateway decisions as requests through Envoy: the token's subject is the
    interop user, the directory lookup adds its roles, the route template is the resource."""
    data = json.loads(INTEROP.read_text())
    wrong = []
    for case in data["gateway"]:
        request = case["request"]
        token = {"authorization": f"Bearer {idp.mint(request['subject']['id'])}"}
        method = request["action"]["name"]
        r = wire.request(method, GATEWAY_PATHS[request["resource"]["id"]], token)
        if r.status != (200 if case["expected"] else 403):
            wrong.append((request, r.status))
        elif not case["expected"]:
            assert_denied(r, 403, "forbidden")
    assert len(data["gateway"]) == 25
    assert wrong == []
