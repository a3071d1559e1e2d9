"""Envoy's HTTP ext_authz protocol (``http_service``): a second transport for the same decisions.

Why a second transport: on a 2-core machine the gRPC stack (grpcio's core, its Cython layer and
the grpc.aio glue) costs several times what a decision costs; see docs/performance.md for the
side-by-side measurement that promoted this transport. Off by default; ``extauthz serve
--http-authz-address 127.0.0.1:9002`` turns it on next to gRPC (both answer from the same
:class:`~extauthz.pipeline.Engine`, snapshot, metrics and decision log). Envoy config:
deploy/envoy/envoy-http-authz.yaml.

The protocol (Envoy 1.40, ``envoy.filters.http.ext_authz`` with ``http_service``): for every
request Envoy sends us a request with the **same method**, the path prefixed with
``path_prefix``, the headers its ``authorization_request.allowed_headers`` let through (``:method``
``:path`` and ``:authority`` become the request line and ``host``), and the buffered body when
``with_request_body`` is set. Our answer:

* **allow**: ``200`` with the identity headers (Envoy copies those matching
  ``authorization_response.allowed_upstream_headers`` onto the upstream request, overwriting) and
  ``x-envoy-auth-headers-to-remove: a,b`` (the credential headers Envoy then removes from it);
* **deny**: the decision's status (401 with one ``www-authenticate`` per challenge, 403, 400,
  429 with ``retry-after``), its headers and its ``application/problem+json`` body, which Envoy
  passes to the client (``allowed_client_headers``);
* **5xx** (503 when a dependency is down, 500 on an internal error): Envoy treats any 5xx from
  an HTTP authorization service as an *error*, not a denial: the client gets the filter's
  ``status_on_error`` (default 403; the example config sets 503) and not our body. Fail closed
  either way.

Limits of the mapping (the gRPC transport has none of them):

* no ``context_extensions``: routes are chosen by extauthz's own host/path/method matchers;
* no peer certificate (``include_peer_certificate`` is gRPC-only): mTLS needs Envoy to send
  ``x-forwarded-client-cert`` (``forward_client_cert_details: SANITIZE_SET``) and the
  authenticator's XFCC option;
* no client address of its own: Envoy can send it in a header it sets itself
  (``authorization_request.headers_to_add`` with ``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``,
  which overwrites a client-sent header of the same name), and ``--http-authz-source-header NAME``
  tells extauthz to read it. Off by default, because without that Envoy setting the header is
  whatever the client sent. Without it (or with a value that is not an IP address) policies with
  ``source`` CIDRs see an empty address and deny (fail closed), and Basic's per-address
  brute-force limit has no address to count;
* no dynamic metadata, and query parameters cannot be removed: a decision that must strip a
  credential from the query string is refused (503 ``internal_error``; the client gets Envoy's
  ``status_on_error``) rather than let the credential through to the upstream: routes that read
  credentials from the query string need the gRPC transport;
* Envoy prepends ``path_prefix`` to the path: the prefix given here is stripped, and a request
  without it is refused (400).

Parsing is httptools (the llhttp parser Node.js uses); a message larger than ``max_head_bytes``
(request line and headers) or ``max_body_bytes`` is refused with 431/413 and the connection is
closed. Envoy sends one request at a time per connection; pipelined requests are still answered
in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from functools import partial
from types import MappingProxyType
from typing import Any, cast

import httptools

from extauthz.authz.rules import parse_address
from extauthz.decision import Decision, from_error
from extauthz.decisionlog import DecisionLog
from extauthz.errors import BadRequestError, CheckError, Reason
from extauthz.metrics import NO_ROUTE_LABEL, CheckRecorder
from extauthz.pipeline import Engine
from extauthz.request import _parse_query, split_host
from extauthz.types import Headers, RequestView

log = logging.getLogger("extauthz.http_authz")

DEFAULT_PATH_PREFIX = "/check"
#: request line + headers; Envoy's own default header limit is 60 KiB
DEFAULT_MAX_HEAD_BYTES = 96 * 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: the header through which Envoy removes headers from the upstream request on allow
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            413: "Content Too Large", 429: "Too Many Requests", 431:
            "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class _Message:
    """One request as the parser delivers it."""

    __slots__ = ("body", "head_bytes", "headers", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.method = ""
        self.head_bytes = 0


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _drive(coro: Coroutine[Any, Any, Decision]) -> tuple[bool, Any]:
    """Run ``coro`` until it finishes or first suspends: (True, result) | (False, awaited).

    Cached credentials decide without awaiting anything; driving the coroutine in place saves a
    task and a loop iteration per request. A coroutine that suspends (JWKS fetch, introspection,
    Redis) has yielded the future it waits on; :func:`_resume` continues it as a task.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, awaited


async def _resume(coro: Coroutine[Any, Any, Decision], awaited: Any) -> Decision:
    """Finish a coroutine :func:`_drive` started: wait for what it waits on, then step it.

    This is what an asyncio Task does with a coroutine: the future it yielded is awaited here
    (without raising: the coroutine reads the outcome itself when resumed), then it is sent
    ``None`` until it returns.
    """
    try:
        while True:
            if isinstance(awaited, asyncio.Future):
                await asyncio.wait((awaited,))
            else:  # a bare yield (asyncio.sleep(0)): give the loop one turn
                await asyncio.sleep(0)
            try:
                awaited = coro.send(None)
            except StopIteration as stop:
                return cast(Decision, stop.value)
    except BaseException:
        coro.close()
        raise


#: the header the example Envoy configurations (deploy/envoy/envoy-http-authz.yaml, the
#: benchmark's) set to the client address, for ``--http-authz-source-header``
SOURCE_HEADER = "x-extauthz-source-address"


def source_address(headers: dict[str, str], header: str | None) -> str:
    """The client address Envoy put in ``header``, normalized by the same parser the ``source``
    rules use ("" when off, absent or not an IP address: the fail-closed answer, a ``source``
    rule cannot match it)."""
    if not header:
        return ""
    ip = parse_address(headers.get(header, ""))
    return "" if ip is None else str(ip)


def to_view(method: str, target: str, headers: dict[str, str], body: bytes,
            path_prefix: str, head_bytes: int, source_header: str | None = None) -> RequestView:
    """The RequestView of one authorization request (raises BadRequestError)."""
    if path_prefix:
        if not target.startswith(path_prefix):
            raise BadRequestError(Reason.BAD_REQUEST, "path without the configured prefix")
        target = target[len(path_prefix):]
    if not target.startswith("/"):
        raise BadRequestError(Reason.BAD_REQUEST, "not an origin-form path")
    path, _, raw_query = target.partition("?")
    path, _, _fragment = path.partition("#")
    query = MappingProxyType(_parse_query(raw_query)) if raw_query else MappingProxyType({})
    return RequestView(
        method=method,
        host=split_host(headers.get("host", "")),
        path=path or "/",
        raw_query=raw_query,
        query=query,
        scheme=headers.get("x-forwarded-proto", "http"),
        headers=Headers.from_lowercase(headers),
        body=body,
        request_id=headers.get("x-request-id", ""),
        source_address=source_address(headers, source_header),
        protocol="",
        header_bytes=head_bytes,
    )


def render(decision: Decision, keep_alive: bool) -> bytes:
    """The HTTP/1.1 response that makes Envoy carry out ``decision``."""
    if decision.allowed and decision.remove_query:
        # HTTP mode cannot drop query parameters: refuse rather than leak the credential
        log.error("route %s strips a query-string credential, which the HTTP transport cannot "
                  "do (use gRPC for this route); refused", decision.route)
        decision = from_error(RuntimeError(), decision.route)
    lines: list[str]
    if decision.allowed:
        payload = b""
        lines = ["HTTP/1.1 200 OK"]
        lines.extend(f"{k}: {v}" for k, v in decision.upstream_headers)
        if decision.remove_headers:
            lines.append(f"{REMOVE_HEADER}: " + ",".join(decision.remove_headers))
        # for the client's response (RateLimit fields): allowed_client_headers_on_success
        lines.extend(f"{k}: {v}" for k, v in decision.response_headers)
    else:
        payload = decision.body.encode()
        status = decision.http_status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Denied')}"]
        lines.extend(f"{k}: {v}" for k, v in decision.response_headers)
    lines.append(f"content-length: {len(payload)}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class _Connection(asyncio.Protocol):
    """One connection from Envoy: parse, decide, answer, in order."""

    def __init__(self, server: HttpAuthzServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current = _Message()
        self.header_name = b""
        self.pending: deque[tuple[_Message, bool]] = deque()
        self.busy = False
        self.closing = False
        #: the status a callback refused the message with (431/413)
        self.refused = 0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except _TooLarge as exc:
            self._fail(exc.status)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            # httptools wraps what a callback raised (HttpParserCallbackError)
            self._fail(self.refused or 400)

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Message()

    def on_url(self, url: bytes) -> None:
        message = self.current
        message.url += url
        message.head_bytes += len(url)
        if message.head_bytes > self.server.max_head_bytes:
            self.refused = 431
            raise _TooLarge(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self.current
        message.head_bytes += len(name) + len(value)
        if message.head_bytes > self.server.max_head_bytes:
            self.refused = 431
            raise _TooLarge(431)
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", "surrogateescape")
        headers = message.headers
        # repeated headers joined with "," (as Envoy's gRPC CheckRequest has them)
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self.current.method = self.parser.get_method().decode("ascii", "replace")

    def on_body(self, body: bytes) -> None:
        message = self.current
        message.body.append(body)
        if sum(map(len, message.body)) > self.server.max_body_bytes:
            self.refused = 413
            raise _TooLarge(413)

    def on_message_complete(self) -> None:
        self.pending.append((self.current, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()

    # -- answering
    def _next(self) -> None:
        while self.pending and not self.closing:
            message, keep_alive = self.pending.popleft()
            started = time.perf_counter()
            view, coro_or_decision = self.server.begin(message)
            if isinstance(coro_or_decision, Decision):
                self._answer(view, coro_or_decision, keep_alive, started)
                continue
            done, value = _drive(coro_or_decision)
            if done:
                self._answer(view, value, keep_alive, started)
                continue
            self.busy = True
            task = asyncio.ensure_future(_resume(coro_or_decision, value))
            self.server.tasks.add(task)
            task.add_done_callback(partial(self._finished, view=view, keep_alive=keep_alive,
                                           started=started))
            return

    def _finished(self, task: asyncio.Task[Decision], *, view: RequestView | None,
                  keep_alive: bool, started: float) -> None:
        self.server.tasks.discard(task)
        self.busy = False
        if task.cancelled():
            decision = from_error(RuntimeError(), NO_ROUTE_LABEL)
        elif (exc := task.exception()) is not None:
            log.error("check failed (denied): %s", type(exc).__name__)
            decision = from_error(exc, NO_ROUTE_LABEL)
        else:
            decision = task.result()
        self._answer(view, decision, keep_alive, started)
        self._next()

    def _answer(self, view: RequestView | None, decision: Decision, keep_alive: bool,
                started: float) -> None:
        try:
            payload = render(decision, keep_alive)
        except Exception:
            log.exception("could not render a response (denied)")
            decision = from_error(RuntimeError(), NO_ROUTE_LABEL)
            payload = render(decision, keep_alive)
        self.server.record(view, decision, time.perf_counter() - started)
        if self.transport is not None and not self.closing:
            self.transport.write(payload)
            if not keep_alive:
                self.closing = True
                self.transport.close()

    def _fail(self, status: int) -> None:
        """A request we cannot read: answer ``status`` and close (no decision to log)."""
        self.closing = True
        if self.transport is not None:
            line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Bad Request')}\r\n"
            self.transport.write(
                (line + "content-length: 0\r\nconnection: close\r\n\r\n").encode())
            self.transport.close()


class HttpAuthzServer:
    """Serves Envoy's HTTP ext_authz protocol from an :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        decision_log: DecisionLog | None = None,
        *,
        path_prefix: str = DEFAULT_PATH_PREFIX,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        source_header: str | None = None,
    ) -> None:
        self.engine = engine
        #: the header Envoy sets to the client address (lower case); None: no client address
        self.source_header = source_header.lower() if source_header else None
        self.path_prefix = path_prefix.rstrip("/")
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[Decision]] = set()
        self._server: asyncio.Server | None = None
        self._recorder = CheckRecorder(engine.metrics, decision_log)
        self.port = 0

    def begin(self, message: _Message) -> tuple[RequestView | None,
                                                Decision | Coroutine[Any, Any, Decision]]:
        """The view and the check coroutine of ``message`` (or a deny when it is unreadable)."""
        try:
            target = message.url.decode("utf-8", "surrogateescape")
            view = to_view(message.method, target, message.headers, b"".join(message.body),
                           self.path_prefix, message.head_bytes, self.source_header)
        except CheckError as exc:
            return None, from_error(exc, NO_ROUTE_LABEL)
        except Exception:
            log.exception("could not read an authorization request (denied)")
            return None, from_error(RuntimeError(), NO_ROUTE_LABEL)
        return view, self.engine.check(view)

    def record(self, view: RequestView | None, decision: Decision, elapsed: float) -> None:
        """Metrics and decision log, through the same recorder as the gRPC servicer."""
        self._recorder.finished(view, decision, elapsed)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=False, backlog=1024)
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, wait up to ``grace`` seconds for checks in flight, close the rest."""
        if self._server is None:
            return
        self._server.close()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for conn in list(self.connections):
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
        await self._server.wait_closed()
        self._server = None
