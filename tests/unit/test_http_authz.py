"""The HTTP ext_authz transport in process: same decisions as gRPC, Envoy's HTTP protocol."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extauthz.decision import Decision, GrpcCode, Outcome, deny
from extauthz.errors import Reason
from extauthz.http_authz import ROUTE_HEADER, route_context, to_view
from extauthz.keys import hash_api_key
from extauthz.respond.http import REMOVE_HEADER, render
from extauthz.server import Server, ServerOptions

KEY = "eak_http-authz-test-key-0000000000"

CONFIG = f"""
authenticators:
  keys: {{api_key: {{}}}}
  qkeys: {{api_key: {{sources: [{{query: api_key}}]}}}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [read]}}]
routes:
- name: api
  match: {{prefix: /api/}}
  authn: [keys]
- name: admin
  match: {{prefix: /admin/}}
  authn: [keys]
  authz: {{scopes_all: [admin]}}
- name: query
  match: {{prefix: /q/}}
  authn: [qkeys]
"""


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return Response(status, headers, body)


def request(path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes = b"") -> bytes:
    lines = [f"{method} /check{path} HTTP/1.1", "host: svc.local:8080",
             f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2,
                               decision_log=False, watch_interval_seconds=0,
                               http_authz_address="127.0.0.1:0"))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def exchange(server: Server, *raw: bytes) -> list[Response]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_authz_port)
    try:
        writer.write(b"".join(raw))
        await writer.drain()
        return [await read_response(reader) for _ in raw]
    finally:
        writer.close()


async def test_allow_sets_identity_headers_and_removes_the_credential(server: Server) -> None:
    [resp] = await exchange(server, request("/api/orders", {"x-api-key": KEY}))
    assert resp.status == 200
    assert resp.header("x-auth-subject") == "alice"
    removed = (resp.header(REMOVE_HEADER) or "").split(",")
    assert "x-api-key" in removed
    assert resp.body == b""


async def test_missing_credential_is_401_with_challenge_and_problem_body(server: Server) -> None:
    [resp] = await exchange(server, request("/api/orders"))
    assert resp.status == 401
    assert resp.all("www-authenticate") and resp.all("www-authenticate")[0].startswith("ApiKey")
    assert resp.header("content-type") == "application/problem+json"
    problem = json.loads(resp.body)
    assert problem["status"] == 401 and problem["reason"] == "missing_credential"


async def test_wrong_key_is_401_invalid_api_key(server: Server) -> None:
    [resp] = await exchange(server, request("/api/orders", {"x-api-key": "eak_wrong"}))
    assert resp.status == 401
    assert json.loads(resp.body)["reason"] == "invalid_api_key"


async def test_insufficient_scope_is_403(server: Server) -> None:
    [resp] = await exchange(server, request("/admin/users", {"x-api-key": KEY}))
    assert resp.status == 403
    assert json.loads(resp.body)["reason"] == "insufficient_scope"


async def test_no_route_is_403(server: Server) -> None:
    [resp] = await exchange(server, request("/elsewhere", {"x-api-key": KEY}))
    assert resp.status == 403
    assert json.loads(resp.body)["reason"] == "no_route"


async def test_path_without_the_prefix_is_400(server: Server) -> None:
    raw = f"GET /api/orders HTTP/1.1\r\nhost: svc\r\nx-api-key: {KEY}\r\n\r\n".encode()
    [resp] = await exchange(server, raw)
    assert resp.status == 400
    assert json.loads(resp.body)["reason"] == "bad_request"


async def test_query_credential_cannot_be_stripped_so_it_is_refused(server: Server) -> None:
    # HTTP mode has no way to remove a query parameter: fail closed, never leak it upstream
    [resp] = await exchange(server, request(f"/q/x?api_key={KEY}"))
    assert resp.status == 503
    assert json.loads(resp.body)["reason"] == "internal_error"


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(server: Server) -> None:
    responses = await exchange(
        server,
        request("/api/a", {"x-api-key": KEY}),
        request("/api/b"),
        request("/admin/c", {"x-api-key": KEY}),
        request("/api/d", {"x-api-key": KEY}),
    )
    assert [r.status for r in responses] == [200, 401, 403, 200]


async def test_malformed_request_is_400_and_closed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_authz_port)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        resp = await read_response(reader)
        assert resp.status == 400
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    finally:
        writer.close()


async def test_oversized_headers_are_431_and_closed(server: Server) -> None:
    big = "x" * (100 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_authz_port)
    try:
        writer.write(request("/api/a", {"x-big": big}))
        resp = await read_response(reader)
        assert resp.status == 431
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_metrics_count_http_checks_like_grpc_ones(server: Server) -> None:
    checks = server.metrics.checks
    before = checks.labels("api", "allow", "ok")._value.get()
    await exchange(server, request("/api/a", {"x-api-key": KEY}))
    assert checks.labels("api", "allow", "ok")._value.get() == before + 1


def test_view_reads_method_host_path_query_and_repeated_headers() -> None:
    view = to_view("POST", "/check/v1/x?a=1&a=2&b=3", {"host": "API.example.com:443",
                                                       "x-forwarded-proto": "https",
                                                       "x-request-id": "r1", "a": "1,2"},
                   b"body", "/check", 40)
    assert (view.method, view.host, view.path) == ("POST", "api.example.com", "/v1/x")
    assert dict(view.query) == {"a": "1", "b": "3"} and view.raw_query == "a=1&a=2&b=3"
    assert view.scheme == "https" and view.request_id == "r1" and view.body == b"body"
    assert view.headers.get("a") == "1,2" and view.header_bytes == 40
    assert not view.context_extensions and view.peer_certificate == ""


def test_render_close_adds_connection_close() -> None:
    payload = render(deny(403, GrpcCode.PERMISSION_DENIED, Reason.FORBIDDEN, "r", "no"), False)
    head = payload.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 403 Forbidden")
    assert "connection: close" in head


async def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    from extauthz.http_authz import HttpAuthzServer, HttpLimits
    from extauthz.metrics import Metrics
    from extauthz.pipeline import Engine

    srv = HttpAuthzServer(Engine(Metrics()), limits=HttpLimits(max_body_bytes=10))
    port = await srv.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("/api/a", method="POST", body=b"x" * 100))
        resp = await read_response(reader)
        assert resp.status == 413
        writer.close()
    finally:
        await srv.stop(1)


async def test_a_check_runs_in_a_task_so_asyncio_timeout_works() -> None:
    """Issue 13.5: a check driven outside a task could not use asyncio.timeout (every Redis
    call does): "Timeout should be used inside a task" -> 503 on every Redis-backed check."""
    from extauthz.decision import GrpcCode, deny
    from extauthz.errors import Reason
    from extauthz.http_authz import _start_check

    async def bounded(delay: float) -> Decision:
        async with asyncio.timeout(1):
            await asyncio.sleep(delay)
        return deny(403, GrpcCode.PERMISSION_DENIED, Reason.FORBIDDEN, "route-x", "")

    task = _start_check(bounded(0.01))
    decision = await asyncio.wait_for(task, 5)
    assert decision.route == "route-x"

    async def too_slow() -> Decision:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
        raise AssertionError("not reached")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_start_check(too_slow()), 5)


async def test_http_only_server_without_grpc(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "off", "127.0.0.1:0", grace_seconds=2,
                               decision_log=False, watch_interval_seconds=0,
                               http_authz_address="127.0.0.1:0"))
    await srv.start()
    try:
        assert srv.grpc_port == 0 and srv.ready
        allowed, denied = await exchange(srv, request("/api/a", {"x-api-key": KEY}),
                                         request("/api/a"))
        assert allowed.status == 200 and allowed.header("x-auth-subject") == "alice"
        assert denied.status == 401
    finally:
        await srv.stop()


def test_cli_refuses_grpc_off_without_the_http_transport(tmp_path: Path) -> None:
    from extauthz.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    assert main(["serve", "--config", str(config), "--grpc-address", "off"]) == 2


@pytest.mark.parametrize(
    ("header", "headers", "expected"),
    [
        (None, {"x-src": "10.1.2.3"}, ""),  # off by default: a client could have sent it
        ("x-src", {"x-src": "10.1.2.3"}, "10.1.2.3"),
        ("x-src", {"x-src": " 2001:DB8::1 "}, "2001:db8::1"),
        ("x-src", {}, ""),
        ("x-src", {"x-src": "10.1.2.3, 10.9.9.9"}, ""),  # two values: not Envoy's one address
        ("x-src", {"x-src": "example.com"}, ""),
        ("x-src", {"x-src": "10.1.2.3:8080"}, ""),
    ],
)
def test_source_address_only_from_the_configured_header_and_only_an_ip(
        header: str | None, headers: dict[str, str], expected: str) -> None:
    view = to_view("GET", "/check/", {"host": "h", **headers}, b"", "/check", 0, header)
    assert view.source_address == expected


async def test_source_rule_sees_the_address_from_the_configured_header(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + """\
- name: inside
  match: {prefix: /inside/}
  authn: [keys]
  authz: {rules: [{source: {allow: [10.0.0.0/8]}}]}
""")
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2,
                               decision_log=False, watch_interval_seconds=0,
                               http_authz_address="127.0.0.1:0",
                               http_authz_source_header="X-Src"))
    await srv.start()
    try:
        statuses = []
        for source in ("10.1.2.3", "192.0.2.1", None):
            headers = {"x-api-key": KEY} | ({"x-src": source} if source else {})
            [resp] = await exchange(srv, request("/inside/a", headers))
            statuses.append(resp.status)
        # a 403 here is the source rule's: the key is valid
        assert statuses == [200, 403, 403]
    finally:
        await srv.stop()


def test_envoys_own_content_length_is_not_the_clients() -> None:
    """Issue 14.1: over this transport content-length describes what Envoy forwarded. With no
    body forwarded it says 0 whatever the client sent, so it must not reach the view (a covered
    digest of the empty body would pass against a body never seen)."""
    bodyless = to_view("POST", "/check/x", {"host": "h", "content-length": "0"}, b"", "/check", 0)
    assert "content-length" not in bodyless.headers
    forwarded = to_view("POST", "/check/x", {"host": "h", "content-length": "4",
                                             "x-envoy-auth-partial-body": "false"},
                        b"body", "/check", 0)
    assert forwarded.headers.get("content-length") == "4"


# -- parity with gRPC (issue 12.4) ---------------------------------------------------------------

def _allow(headers: tuple[tuple[str, str], ...] = (),
           metadata: dict[str, object] | None = None) -> Decision:
    return Decision(outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK,
                    reason=Reason.OK, route="r", upstream_headers=headers,
                    dynamic_metadata=metadata or {})


def test_identity_values_are_sent_as_utf8() -> None:
    payload = render(_allow((("x-auth-subject", "zoë"), ("x-auth-email", "日本@example.org"))),
                     True)
    assert b"x-auth-subject: zo\xc3\xab\r\n" in payload
    assert "x-auth-email: 日本@example.org\r\n".encode() in payload


def test_a_head_answer_has_no_body_but_says_how_long_it_would_be() -> None:
    denied = deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL, "r", "creds",
                  challenges=['ApiKey realm="x"'])
    full = render(denied, True)
    head = render(denied, True, head=True)
    assert full.startswith(head) and full != head and head.endswith(b"\r\n\r\n")
    assert f"content-length: {len(denied.body.encode())}".encode() in head


async def test_head_check_gets_headers_only_and_the_connection_stays_usable(
        server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_authz_port)
    try:
        writer.write(request("/api/orders", method="HEAD")
                     + request("/api/orders", {"x-api-key": KEY}))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 401 ")
        # the next bytes are the next response, not the problem body of the first
        after = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert after.startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()


def test_route_name_only_from_the_configured_header() -> None:
    headers = {ROUTE_HEADER: "public", "x-other": "admin"}
    assert dict(route_context(headers, ROUTE_HEADER, "route")) == {"route": "public"}
    assert dict(route_context(headers, None, "route")) == {}  # off by default
    assert dict(route_context({ROUTE_HEADER: ""}, ROUTE_HEADER, "route")) == {}
    assert dict(route_context({}, ROUTE_HEADER, "route")) == {}


async def test_route_header_names_the_route_like_context_extensions(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2,
                               decision_log=False, watch_interval_seconds=0,
                               http_authz_address="127.0.0.1:0",
                               http_authz_route_header=ROUTE_HEADER))
    await srv.start()
    try:
        # /elsewhere matches no route by path; Envoy named it `api`
        [named, unknown, unnamed] = await exchange(
            srv, request("/elsewhere", {"x-api-key": KEY, ROUTE_HEADER: "api"}),
            request("/api/x", {"x-api-key": KEY, ROUTE_HEADER: "nope"}),
            request("/elsewhere", {"x-api-key": KEY}))
        assert named.status == 200 and named.header("x-extauthz-md-route") is None
        assert unknown.status == 403 and json.loads(unknown.body)["reason"] == "no_route"
        assert unnamed.status == 403
    finally:
        await srv.stop()


def test_dynamic_metadata_headers_only_when_asked() -> None:
    assert b"x-extauthz-md-" not in render(_allow(metadata={"route": "r"}), True)


def test_dynamic_metadata_is_carried_in_headers() -> None:
    payload = render(_allow(metadata={"route": "r", "identity": {"subject": "zoë"},
                                      "shadow_deny": {"reason": "forbidden"}}), True,
                     metadata=True)
    head = payload.decode()
    assert "x-extauthz-md-route: r\r\n" in head
    identity = next(line for line in head.split("\r\n")
                    if line.startswith("x-extauthz-md-identity: "))
    assert json.loads(identity.partition(": ")[2]) == {"subject": "zoë"}
    assert identity.isascii()
    assert "x-extauthz-md-shadow-deny: " in head


def test_cookie_rewrite_refused_unless_envoy_forwards_it() -> None:
    rewritten = _allow((("x-auth-subject", "alice"), ("cookie", "theme=dark")))
    refused = render(rewritten, True).decode()
    assert refused.startswith("HTTP/1.1 503 ") and "theme=dark" not in refused
    assert '"reason":"internal_error"' in refused
    applied = render(rewritten, True, cookie_forwarded=True).decode()
    assert applied.startswith("HTTP/1.1 200 OK") and "cookie: theme=dark\r\n" in applied
    # removing the whole cookie needs no rewrite: always carried
    removed = dataclasses.replace(_allow(), remove_headers=("cookie",))
    assert render(removed, True).decode().startswith("HTTP/1.1 200 OK")


# -- resource bounds (issue 13.1 / 13.3; the process-level attacks are in
# tests/e2e/test_e2e_resource_bounds.py) --------------------------------------------------------


@contextlib.asynccontextmanager
async def bounded_server(tmp_path: Path, **limits: Any) -> AsyncIterator[Server]:
    from extauthz.http_authz import HttpLimits

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    srv = Server(ServerOptions(str(config), "127.0.0.1:0", "127.0.0.1:0", grace_seconds=2,
                               decision_log=False, watch_interval_seconds=0,
                               http_authz_address="127.0.0.1:0",
                               http_authz_limits=HttpLimits(**limits)))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[Server]:
    async with bounded_server(tmp_path, max_connections=3, max_body_bytes=40_000,
                              max_buffered_bytes=50_000, head_timeout=0.4,
                              idle_timeout=0.6) as srv:
        yield srv


def _closed(server: Server, reason: str) -> float:
    value: float = server.metrics.connections_closed.labels("http_authz", reason)._value.get()
    return value


async def test_many_tiny_chunks_reach_the_engine_whole_and_in_order(server: Server) -> None:
    from extauthz.http_authz import _Connection

    seen: list[bytes] = []
    engine = server.http_authz.edge.engine  # type: ignore[union-attr]
    check = engine.check

    def spy(view: Any, trace: Any = None) -> Any:
        seen.append(bytes(view.body))
        return check(view, trace)

    engine.check = spy  # type: ignore[method-assign]
    body = bytes(range(256)) * 40  # 10 240 one-byte chunks
    head = (f"POST /check/api/x HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\n"
            "transfer-encoding: chunked\r\n\r\n").encode()
    chunks = b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body)))
    [resp] = await exchange(server, head + chunks + b"0\r\n\r\n")
    assert resp.status == 200
    assert seen == [body]
    assert _Connection  # the connection class charged 10 240 chunks without re-summing


async def test_pipelined_requests_across_parse_slices_are_all_answered_in_order(
    server: Server,
) -> None:
    # 300 requests (~30 KB) in one write: parsed 8 KiB at a time, paused at max_pipelined
    raw = [request(f"/api/{i}", {"x-api-key": KEY} if i % 3 else None) for i in range(300)]
    responses = await exchange(server, *raw)
    assert [r.status for r in responses] == [401 if i % 3 == 0 else 200 for i in range(300)]


async def test_connections_beyond_the_cap_are_refused_and_counted(bounded: Server) -> None:
    port = bounded.http_authz_port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(request("/api/a", {"x-api-key": KEY}))
            await writer.drain()
            await read_response(reader)
        refused = bounded.metrics.connections_refused.labels("http_authz")._value.get()
        assert refused == 1
        assert bounded.metrics.connections.labels("http_authz")._value.get() == 3
    finally:
        writer.close()
        for _, w in held:
            w.close()
    await asyncio.sleep(0.1)
    [resp] = await exchange(bounded, request("/api/a", {"x-api-key": KEY}))  # room again
    assert resp.status == 200


async def test_requests_held_over_the_server_budget_are_503_and_closed(bounded: Server) -> None:
    port = bounded.http_authz_port
    head = (f"POST /check/api/x HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\n"
            "content-length: 40000\r\n\r\n").encode()
    first_r, first = await asyncio.open_connection("127.0.0.1", port)
    second_r, second = await asyncio.open_connection("127.0.0.1", port)
    try:
        first.write(head + b"a" * 30_000)  # held: 30 KB of the 50 KB budget
        await first.drain()
        await asyncio.sleep(0.05)
        second.write(head + b"b" * 30_000)  # would hold 60 KB
        resp = await read_response(second_r)
        assert resp.status == 503
        assert await asyncio.wait_for(second_r.read(), 5) == b""
        assert _closed(bounded, "buffer_budget") == 1
        first.write(b"a" * 10_000)  # the first one completes normally
        assert (await read_response(first_r)).status == 200
        assert bounded.http_authz.buffered == 0  # type: ignore[union-attr]
    finally:
        first.close()
        second.close()


async def test_slow_head_and_idle_connections_are_closed_at_their_deadlines(
    bounded: Server,
) -> None:
    port = bounded.http_authz_port
    slow_r, slow = await asyncio.open_connection("127.0.0.1", port)
    idle_r, idle = await asyncio.open_connection("127.0.0.1", port)
    try:
        slow.write(b"GET /check/api/x HTTP/1.1\r\nhost: a\r\n")  # never finished
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(slow_r.read(), 5) == b""
        slow_after = asyncio.get_running_loop().time() - started
        assert await asyncio.wait_for(idle_r.read(), 5) == b""
        idle_after = asyncio.get_running_loop().time() - started
    finally:
        slow.close()
        idle.close()
    # head_timeout 0.4 s, idle_timeout 0.6 s, sweeps every 0.1 s
    assert 0.3 < slow_after < 1.5 and 0.5 < idle_after < 2.0
    assert _closed(bounded, "head_timeout") == 1
    assert _closed(bounded, "idle_timeout") == 1


@pytest.fixture
async def unread(tmp_path: Path) -> AsyncIterator[Server]:
    async with bounded_server(tmp_path, idle_timeout=0.6) as srv:
        yield srv


async def test_answers_left_unread_pause_reading_and_the_connection_is_aborted(
    unread: Server,
) -> None:
    bounded = unread
    port = bounded.http_authz_port
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    payload = request("/api/a", {"x-api-key": KEY}) * 200_000
    sent = 0
    loop = asyncio.get_running_loop()
    stalled_at = loop.time()
    while loop.time() - stalled_at < 0.5 and sent < len(payload):
        try:
            sent += sock.send(payload[sent:sent + 65536])
            stalled_at = loop.time()
        except BlockingIOError:
            await asyncio.sleep(0.01)
        except ConnectionResetError:  # already aborted for its unread answers
            break
    try:
        assert sent < len(payload)  # pushed back: the server stopped reading
        assert bounded.metrics.reading_paused.labels("http_authz")._value.get() >= 1
        for _ in range(60):  # idle_timeout 0.6 s after the answers stopped being read
            if _closed(bounded, "unread_output") == 1:
                break
            await asyncio.sleep(0.05)
        assert _closed(bounded, "unread_output") == 1
        await asyncio.sleep(0.05)
        assert bounded.http_authz.buffered == 0  # type: ignore[union-attr]  # all given back
    finally:
        sock.close()


async def test_over_the_budget_a_request_within_its_fair_share_still_passes(
    bounded: Server,
) -> None:
    port = bounded.http_authz_port
    head = (f"POST /check/api/x HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\n"
            "content-length: 40000\r\n\r\n").encode()
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for _, writer in slow:  # 2 x 24 KB held of the 50 KB budget, never finished
            writer.write(head + b"s" * 24_000)
            await writer.drain()
        await asyncio.sleep(0.05)
        # 3 KB more crosses the budget, but this connection holds far less than a third of it
        [resp] = await exchange(bounded, request("/api/a", {"x-api-key": KEY},
                                                 method="POST", body=b"x" * 3_000))
        assert resp.status == 200
        assert _closed(bounded, "buffer_budget") == 0
    finally:
        for _, writer in slow:
            writer.close()


def test_source_addresses_are_remembered_normalized_and_bounded() -> None:
    from extauthz import http_authz
    from extauthz.http_authz import SOURCE_HEADER, source_address

    header = {SOURCE_HEADER: "2001:DB8::0:1"}
    assert source_address(header, SOURCE_HEADER) == "2001:db8::1"
    assert source_address(header, SOURCE_HEADER) == "2001:db8::1"  # remembered, same answer
    assert source_address({SOURCE_HEADER: "not-an-ip"}, SOURCE_HEADER) == ""
    assert source_address({SOURCE_HEADER: "not-an-ip"}, SOURCE_HEADER) == ""
    for i in range(http_authz._MAX_ADDRESSES + 5):  # every client address new
        source_address({SOURCE_HEADER: f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"},
                       SOURCE_HEADER)
    assert len(http_authz._ADDRESSES) <= http_authz._MAX_ADDRESSES
