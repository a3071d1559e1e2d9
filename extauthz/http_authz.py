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

Same product as gRPC (the end-to-end parity table, tests/e2e/test_e2e_parity.py, runs one scenario
list over both transports through Envoy and compares what the upstream and the client receive):

* identity header values are sent as UTF-8 bytes, which is what Envoy puts on the upstream
  request for the gRPC transport's protobuf strings; a value that is not representable denies on
  both (``identity_not_representable``, decided by the pipeline);
* a response to a ``HEAD`` check request has no body (Envoy's HTTP/1 codec would read one as the
  start of the next response and count a protocol error); the deny status and headers still apply;
* route naming: Envoy can send the matched route's ``name`` in a header it sets itself
  (``authorization_request.headers_to_add`` with ``%ROUTE_NAME%``, which replaces a client-sent
  header of that name); ``--http-authz-route-header NAME`` makes extauthz read it exactly like
  gRPC's ``context_extensions[settings.route_key]``. Off by default: without that Envoy setting
  the header is whatever the client sent, and a client could pick a public route;
* dynamic metadata: with ``--http-authz-metadata`` an allow carries it as response headers
  ``x-extauthz-md-route``, ``x-extauthz-md-identity`` and ``x-extauthz-md-shadow-deny``
  (compact JSON), for Envoy's ``authorization_response.dynamic_metadata_from_headers``; Envoy
  stores them as strings under the header names (gRPC: one structured object). Off by default:
  about 3 us of CPU per allowed check, useful only with that Envoy setting;

What this protocol still cannot carry, refused rather than silently dropped:

* query parameters cannot be removed: a decision that must strip a credential from the query
  string is refused (503 ``internal_error``; the client gets Envoy's ``status_on_error``) rather
  than let the credential through to the upstream: routes that read credentials from the query
  string need the gRPC transport;
* a rewritten ``cookie`` (a credential cookie removed, the others kept) reaches the upstream only
  if ``authorization_response.allowed_upstream_headers`` matches ``cookie`` (the example config
  does; tested end to end); otherwise Envoy keeps the client's cookie, credential included.
  extauthz cannot see Envoy's setting, so ``--http-authz-cookie-forwarded`` says it is there;
  without it a decision that rewrites the cookie is refused (503 ``internal_error``);
* no peer certificate of its own (``include_peer_certificate`` is gRPC-only): Envoy sends it in a
  header it sets itself (``authorization_request.headers_to_add`` with
  ``%DOWNSTREAM_PEER_CERT%``, plus ``disallowed_headers`` for the same name, because Envoy leaves
  a client-sent value in place when the connection has no certificate), and
  ``--http-authz-peer-cert-header NAME`` tells extauthz to read it (off by default: without
  those Envoy settings the header is whatever the client sent). XFCC is for hops where TLS ended
  at another proxy (docs/client-certificates.md);
* no client address of its own: Envoy can send it in a header it sets itself
  (``authorization_request.headers_to_add`` with ``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``,
  which overwrites a client-sent header of the same name), and ``--http-authz-source-header NAME``
  tells extauthz to read it. Off by default, because without that Envoy setting the header is
  whatever the client sent. Without it (or with a value that is not an IP address) policies with
  ``source`` CIDRs see an empty address and deny (fail closed), and Basic's per-address
  brute-force limit has no address to count;
* Envoy never passes the client's ``content-length`` on: the one it sends describes the bytes it
  forwards. When it forwarded no body that header is dropped from the view, so nothing reads
  Envoy's ``0`` as "the client sent no body"; a signature that covers a body digest therefore
  needs ``with_request_body`` and a non-empty body on this transport;
* Envoy prepends ``path_prefix`` to the path: the prefix given here is stripped, and a request
  without it is refused (400).

Parsing is httptools (the llhttp parser Node.js uses). Every resource a client can hold is
bounded (:class:`HttpLimits`, README "Resource model"): open connections (beyond the cap a new
one is closed at once), the time to send a request (head and body) and to stay idle, the head and
body bytes of a request (431/413 and closed) and of all requests held together (503 and
closed), the answers a client leaves unread and the requests it pipelines ahead of them (its
socket is no longer read: TCP flow control pushes back on it). Each check starts eagerly
(:mod:`extauthz.eager`: one that completes without awaiting is answered at once, one that awaits
continues in an asyncio task of its own): the check edge (:class:`~extauthz.edge.CheckEdge`
with :class:`HttpAdapter`) reads it, decides, renders the answer
(:func:`extauthz.respond.http.render`) and records it, like every other transport. Envoy sends
one request at a time per connection; pipelined requests are still answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar, cast

import httptools

from extauthz import eager
from extauthz.authz.rules import parse_address
from extauthz.decision import Decision
from extauthz.decisionlog import DecisionLog
from extauthz.edge import Adapter, CheckEdge
from extauthz.errors import BadRequestError, Reason
from extauthz.metrics import CheckRecorder
from extauthz.netlimits import ByteBudget, ConnectionGuard, DeadlineSweeper, Refused
from extauthz.pipeline import Engine
from extauthz.request import _parse_query, split_host
from extauthz.respond.http import REASONS, render
from extauthz.types import Headers, RequestView

log = logging.getLogger("extauthz.http_authz")
T = TypeVar("T")

DEFAULT_PATH_PREFIX = "/check"
#: request line + headers; Envoy's own default header limit is 60 KiB
DEFAULT_MAX_HEAD_BYTES = 96 * 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: the header the example Envoy configuration sets to ``%ROUTE_NAME%``, for
#: ``--http-authz-route-header``
ROUTE_HEADER = "x-extauthz-route-name"
_NO_CONTEXT: MappingProxyType[str, str] = MappingProxyType({})


class _Message:
    """One request as the parser delivers it."""

    __slots__ = ("body", "head_bytes", "headers", "keep_alive", "method", "size", "url")

    def __init__(self) -> None:
        self.url = bytearray()
        self.headers: dict[str, str] = {}
        #: one growing buffer: a list of chunks would cost an object (~40 bytes) per chunk
        #: and a re-sum per chunk (issue 13.1: 40 000 one-byte chunks took 17.6 s of CPU)
        self.body = bytearray()
        self.method = ""
        self.head_bytes = 0
        #: bytes of this message held in memory (head + body), charged to the server's budget
        self.size = 0
        #: the connection stays open after the answer (set when the message is complete)
        self.keep_alive = True


class _TooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The resource bounds of the HTTP ext_authz listener (README "Resource model")."""

    #: open connections; beyond it a new connection is closed at once (refused, counted)
    max_connections: int = 256
    #: seconds a request may take to arrive, head and body, from its first byte (slowloris)
    head_timeout: float = 10.0
    #: seconds a keep-alive connection may sit with no request, and answers may stay unread
    idle_timeout: float = 60.0
    #: request line + headers; Envoy's own default header limit is 60 KiB
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    #: one request's body (Envoy's ``with_request_body.max_request_bytes`` should be lower)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: all connections' request bytes held in memory together (received, not yet answered,
    #: parsed or not)
    max_buffered_bytes: int = 16 * 1024 * 1024
    #: answers written but not read by the client; above it the connection is not read
    max_unread_output: int = 64 * 1024
    #: requests parsed ahead of their answers on one connection; above it reading pauses
    max_pipelined: int = 16

    def check(self) -> None:
        """Raise ValueError naming the first bound that is not positive."""
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"http_authz {name} must be positive")


#: bytes handed to the parser at a time: between slices the connection may stop parsing (its
#: client pipelines ahead of reading its answers), so one 256 KiB socket read of tiny pipelined
#: requests never becomes thousands of parsed requests at once
_PARSE_SLICE = 4 * 1024
_INF = float("inf")
#: listener label of the metrics
PORT_LABEL = "http_authz"


#: the header the example Envoy configurations (deploy/envoy/envoy-http-authz.yaml, the
#: benchmark's) set to the client address, for ``--http-authz-source-header``
SOURCE_HEADER = "x-extauthz-source-address"


def source_address(headers: dict[str, str], header: str | None) -> str:
    """The client address Envoy put in ``header``, normalized by the same parser the ``source``
    rules use ("" when off, absent or not an IP address: the fail-closed answer, a ``source``
    rule cannot match it)."""
    if not header:
        return ""
    raw = headers.get(header, "")
    known = _ADDRESSES.get(raw)
    if known is not None:
        return known
    ip = parse_address(raw)
    normalized = "" if ip is None else str(ip)
    if len(_ADDRESSES) >= _MAX_ADDRESSES:  # bounded: a new client address costs one parse
        _ADDRESSES.clear()
    _ADDRESSES[raw] = normalized
    return normalized


#: header value -> normalized address: Envoy sends the same few client addresses again and
#: again, and ``ipaddress`` parsing is ~4 µs per check (a tenth of the decision)
_ADDRESSES: dict[str, str] = {}
_MAX_ADDRESSES = 4096


#: the header deploy/envoy/envoy-http-authz.yaml sets to the client certificate
#: (``%DOWNSTREAM_PEER_CERT%``), for ``--http-authz-peer-cert-header``
PEER_CERT_HEADER = "x-extauthz-peer-certificate"
def route_context(headers: dict[str, str], header: str | None,
                  route_key: str) -> MappingProxyType[str, str]:
    """gRPC's ``context_extensions`` as the HTTP transport can have them: ``{route_key: name}``
    from the header Envoy sets to ``%ROUTE_NAME%`` (empty when off, absent or empty: extauthz
    then selects the route by its own matchers, as gRPC does without a route name)."""
    if not header:
        return _NO_CONTEXT
    name = headers.get(header, "")
    return MappingProxyType({route_key: name}) if name else _NO_CONTEXT


def to_view(method: str, target: str, headers: dict[str, str], body: bytes,
            path_prefix: str, head_bytes: int, source_header: str | None = None,
            peer_cert_header: str | None = None,
            context: MappingProxyType[str, str] = _NO_CONTEXT) -> RequestView:
    """The RequestView of one authorization request (raises BadRequestError).

    ``peer_cert_header`` (off by default): the header Envoy sets to ``%DOWNSTREAM_PEER_CERT%``,
    read as the TLS peer certificate — what ``include_peer_certificate`` gives the gRPC
    transport. Only safe when Envoy also keeps a client-sent header of that name away from us
    (``disallowed_headers``): Envoy 1.40 does *not* overwrite it when the connection has no
    client certificate (verified: plaintext and TLS without a certificate pass the client's
    value through; see deploy/envoy/envoy-http-authz.yaml). ``context``: the route name from
    :func:`route_context`, as gRPC's ``context_extensions``.

    ``headers`` (lowercase names) becomes the view's headers without a copy; Envoy's own
    ``content-length`` is removed from it when no body was forwarded.
    """
    if path_prefix:
        if not target.startswith(path_prefix):
            raise BadRequestError(Reason.BAD_REQUEST, "path without the configured prefix")
        target = target[len(path_prefix):]
    if not target.startswith("/"):
        raise BadRequestError(Reason.BAD_REQUEST, "not an origin-form path")
    path, _, raw_query = target.partition("?")
    path, _, _fragment = path.partition("#")
    query = MappingProxyType(_parse_query(raw_query)) if raw_query else _NO_CONTEXT
    if not body:
        # Envoy sets content-length to what it forwards (it never passes the client's on): with
        # no body forwarded it says "0" whatever the client sent, which must not read as "the
        # client sent no body" (a covered digest would pass against a body never seen). In place:
        # ``headers`` becomes the view's headers anyway (no copy on the hot path).
        headers.pop("content-length", None)
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
        peer_certificate=headers.get(peer_cert_header, "") if peer_cert_header else "",
        context_extensions=context,
        protocol="",
        header_bytes=head_bytes,
    )


def _start_check(coro: Coroutine[Any, Any, T],
                 loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[T]:
    """Run one check: a finished future when it completed without awaiting, else its task.

    A check must run as (or on behalf of) a task: ``asyncio.timeout`` (every Redis call, the
    outbound fetches) needs ``current_task()`` (issue 13.5: driving the coroutine by hand with
    ``send()`` made every Redis-backed check 503 "Timeout should be used inside a task").
    :func:`extauthz.eager.start` gives it one without the cost of a task and a loop turn when it
    never suspends (cached credentials); Python 3.12's eager task factory on 3.12+.
    """
    return eager.start(coro, loop)


class _Connection(asyncio.Protocol):
    """One connection from Envoy: parse, decide, answer, in order, within the limits."""

    def __init__(self, server: HttpAuthzServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current = _Message()
        self.pending: deque[_Message] = deque()
        self.busy = False
        self.closing = False
        #: a message has begun and is not complete (the head timeout runs)
        self.receiving = False
        #: the client does not read its answers: asyncio's pause_writing was called
        self.write_paused = False
        #: bytes received but not given to the parser (reading is paused while there are any)
        self.unparsed = bytearray()
        self.read_paused = False
        #: bytes of this connection's messages charged to the server's budget
        self.held = 0
        #: monotonic times of the state changes the deadline is computed from (see deadline)
        self.since = 0.0
        self.paused_at = 0.0
        self.begun_at = 0.0
        #: the status and reason a callback refused the message with (431/413/503)
        self.refused: tuple[int, str] = (0, "")

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (asyncio's, or uvloop's: those implement the interface without
        # subclassing asyncio.Transport, so no isinstance check here)
        self.transport = cast(asyncio.Transport, transport)
        # asyncio calls pause_writing() above ``high``: the answers the client has not read
        self.transport.set_write_buffer_limits(high=self.limits.max_unread_output,
                                               low=self.limits.max_unread_output // 4)
        self.server.connections.add(self)
        self.since = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.guard.release()
        self.closing = True
        self.transport = None
        self.pending.clear()
        self.server.release(self.held + len(self.unparsed))
        self.unparsed = bytearray()
        self.held = 0

    def pause_writing(self) -> None:
        # The client does not read: stop reading it (TCP flow control then stops its sends)
        # and stop answering; the sweeper closes it if it stays so for idle_timeout.
        self.write_paused = True
        self.paused_at = time.monotonic()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.since = time.monotonic()
        self._continue()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.unparsed or self._blocked():
            self._hold_unparsed(data)
            return
        self._feed(data)

    def _hold_unparsed(self, data: bytes | memoryview) -> None:
        """Keep bytes the parser may not see yet (charged to the server's budget) and stop
        reading until they are parsed."""
        self.unparsed += data
        self._pause_reading()
        if not self.server.charge(len(data), self.held + len(self.unparsed)):
            self._fail(503, "buffer_budget")

    def _blocked(self) -> bool:
        """Parse no further: answers are not being read, or too many wait for their turn."""
        return self.write_paused or len(self.pending) >= self.limits.max_pipelined

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.server.reading_paused.inc()
            self.transport.pause_reading()

    def _feed(self, data: bytes | bytearray) -> None:
        """Parse ``data`` a slice at a time, keeping what follows a slice after which the
        connection became blocked (reading stays paused until it is parsed)."""
        view = memoryview(data)
        try:
            for pos in range(0, len(view), _PARSE_SLICE):
                if self.closing:
                    return
                if pos and self._blocked():
                    self._hold_unparsed(view[pos:])
                    return
                self.parser.feed_data(view[pos:pos + _PARSE_SLICE])
        except _TooLarge as exc:
            self._fail(exc.status, exc.reason)
        except httptools.HttpParserUpgrade:
            self._fail(400, "bad_request")
        except httptools.HttpParserError:
            # httptools wraps what a callback raised (HttpParserCallbackError)
            status, reason = self.refused
            self._fail(status or 400, reason or "bad_request")
        finally:
            view.release()

    def _continue(self) -> None:
        """Answer what waits, then parse what was held back, then read again."""
        self._next()
        if self.closing or self._blocked():
            return
        if self.unparsed:
            data, self.unparsed = self.unparsed, bytearray()
            self.server.release(len(data))
            self._feed(data)
            if self.closing or self.unparsed:
                return
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Message()
        self.receiving = True
        self.begun_at = time.monotonic()

    def _charge(self, message: _Message, size: int) -> None:
        message.size += size
        self.held += size
        if not self.server.charge(size, self.held + len(self.unparsed)):
            self.refused = (503, "buffer_budget")
            raise _TooLarge(503, "buffer_budget")

    def on_url(self, url: bytes) -> None:
        message = self.current
        message.url += url
        message.head_bytes += len(url)
        if message.head_bytes > self.limits.max_head_bytes:
            self.refused = (431, "too_large")
            raise _TooLarge(431, "too_large")
        self._charge(message, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self.current
        size = len(name) + len(value)
        message.head_bytes += size
        if message.head_bytes > self.limits.max_head_bytes:
            self.refused = (431, "too_large")
            raise _TooLarge(431, "too_large")
        # _charge inlined (once per header, ~8 per check): the server's budget is asked only
        # when it is exceeded (HttpAuthzServer.charge with 0 applies the fair-share rule)
        message.size += size
        self.held += size
        budget = self.server.budget
        budget.held += size
        if (budget.held > budget.limit
                and not budget.charge(0, self.held + len(self.unparsed))):
            self.refused = (503, "buffer_budget")
            raise _TooLarge(503, "buffer_budget")
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", "surrogateescape")
        headers = message.headers
        # repeated headers joined with "," (as Envoy's gRPC CheckRequest has them)
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self.current.method = self.parser.get_method().decode("ascii", "replace")

    def on_body(self, body: bytes) -> None:
        message = self.current
        message.body += body
        if len(message.body) > self.limits.max_body_bytes:
            self.refused = (413, "too_large")
            raise _TooLarge(413, "too_large")
        self._charge(message, len(body))

    def on_message_complete(self) -> None:
        self.receiving = False
        message = self.current
        message.keep_alive = self.parser.should_keep_alive()
        self.pending.append(message)
        if not self.busy:
            self._next()

    # -- answering
    def _next(self) -> None:
        while self.pending and not self.closing and not self.write_paused:
            message = self.pending.popleft()
            # the check edge reads, decides, renders and records (never raises)
            task = _start_check(self.server.answer(message), self.server.loop)
            if task.done():
                self._answer(message, self._payload(task, message))
                continue
            self.busy = True
            self.server.tasks.add(task)
            task.add_done_callback(partial(self._finished, message=message))
            return

    @property
    def deadline(self) -> float:
        """When the sweeper closes this connection, from its state (``inf``: not now)."""
        limits = self.limits
        if self.transport is None:
            return _INF
        if self.closing:  # closed after its last answer: the client has idle_timeout to read it
            return self.since + limits.idle_timeout
        if self.write_paused:  # answers left unread
            return self.paused_at + limits.idle_timeout
        if self.busy or self.pending:  # ours to answer (the check has its own timeouts)
            return _INF
        if self.receiving:  # the request must arrive within head_timeout of its first byte
            return self.begun_at + limits.head_timeout
        return self.since + limits.idle_timeout  # keep-alive, waiting for a request

    def _payload(self, task: asyncio.Future[bytes], message: _Message) -> bytes:
        """The answer of a finished check task; one that did not run to its end (cancelled at
        shutdown) is refused with a 503."""
        if task.cancelled():
            return self.server.edge.refused(message)
        exc = task.exception()
        if exc is not None:  # the edge never raises; should it ever, fail closed
            log.error("check failed (denied): %s", type(exc).__name__)
            return self.server.edge.refused(message)
        return task.result()

    def _finished(self, task: asyncio.Future[bytes], *, message: _Message) -> None:
        self.server.tasks.discard(task)
        self.busy = False
        self._answer(message, self._payload(task, message))
        self._continue()

    def _answer(self, message: _Message, payload: bytes) -> None:
        released = min(message.size, self.held)
        self.held -= released
        self.server.release(released)
        self.since = time.monotonic()
        if self.transport is not None and not self.closing:
            self.transport.write(payload)  # may call pause_writing() at once
            if not message.keep_alive:
                self._close()

    def _close(self) -> None:
        """Close after what was written is sent; a client that does not read it is aborted
        by the sweeper after idle_timeout (close() alone would keep it open for ever)."""
        self.closing = True
        self.since = time.monotonic()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, status: int, reason: str) -> None:
        """A request we cannot read: answer ``status`` and close (no decision to log)."""
        self.server.closed.labels(PORT_LABEL, reason).inc()
        if self.transport is not None and not self.closing:
            line = f"HTTP/1.1 {status} {REASONS.get(status, 'Bad Request')}\r\n"
            self.transport.write(
                (line + "content-length: 0\r\nconnection: close\r\n\r\n").encode())
        self._close()

    def expire(self, now: float) -> str | None:
        """Abort: a deadline passed (head not sent in time, idle, or answers left unread)."""
        if self.transport is None or self.deadline >= now:
            return None
        if self.write_paused or self.closing:
            reason = "unread_output"
        elif self.receiving:
            reason = "head_timeout"
        else:
            reason = "idle_timeout"
        self.closing = True
        self.transport.abort()
        return reason


@dataclass(frozen=True, slots=True)
class HttpAdapter:
    """This transport's half of the check edge (:class:`~extauthz.edge.CheckEdge`): an
    authorization request in (:func:`to_view`), an HTTP/1.1 answer out
    (:func:`~extauthz.respond.http.render`)."""

    engine: Engine
    #: stripped from every request target (without a trailing ``/``)
    path_prefix: str
    #: the header Envoy sets to the client address (lower case); None: no client address
    source_header: str | None = None
    #: the header Envoy sets to the client certificate (lower case); None: no certificate
    peer_cert_header: str | None = None
    #: the header Envoy sets to ``%ROUTE_NAME%`` (lower case); None: extauthz's own matchers
    route_header: str | None = None
    #: Envoy's allowed_upstream_headers matches ``cookie`` (see :func:`render`)
    cookie_forwarded: bool = False
    #: send dynamic metadata as x-extauthz-md-* response headers
    metadata: bool = False

    def read(self, message: _Message) -> RequestView:
        """The view of ``message`` (raises BadRequestError when it is not a check request)."""
        target = message.url.decode("utf-8", "surrogateescape")
        snapshot = self.engine.snapshot
        context = route_context(message.headers, self.route_header,
                                snapshot.settings.route_key if snapshot else "route")
        return to_view(message.method, target, message.headers, bytes(message.body),
                       self.path_prefix, message.head_bytes, self.source_header,
                       self.peer_cert_header, context)

    def render(self, decision: Decision, message: _Message) -> bytes:
        """The answer to ``message`` (a HEAD check gets no body)."""
        return render(decision, message.keep_alive, message.method == "HEAD",
                      self.cookie_forwarded, self.metadata)


class HttpAuthzServer:
    """Serves Envoy's HTTP ext_authz protocol from an :class:`Engine`.

    ``adapter``: another protocol carried over the same bounded HTTP/1.1 server (default:
    :class:`HttpAdapter`, the HTTP ext_authz protocol; the header options above configure
    it). Its ``read`` gets each parsed request (``method``, ``url`` bytes, ``headers`` with
    lower-case names, ``body``, ``keep_alive``) and its ``render`` must return the whole
    HTTP/1.1 response, closing the connection when ``keep_alive`` is false — e.g. a serialized
    CheckRequest body answered with a serialized CheckResponse (:data:`extauthz.edge.GRPC_BYTES`).
    A server that also answers requests that are no check (health, a wrong path) replaces
    :attr:`answer` with a function that answers those itself and passes checks to
    ``self.edge.answer``.
    """

    def __init__(
        self,
        engine: Engine,
        decision_log: DecisionLog | None = None,
        *,
        path_prefix: str = DEFAULT_PATH_PREFIX,
        limits: HttpLimits | None = None,
        source_header: str | None = None,
        peer_cert_header: str | None = None,
        route_header: str | None = None,
        cookie_forwarded: bool = False,
        metadata: bool = False,
        adapter: Adapter[Any, bytes] | None = None,
    ) -> None:
        self.engine = engine
        if adapter is None:
            adapter = HttpAdapter(
                engine, path_prefix.rstrip("/"),
                source_header=source_header.lower() if source_header else None,
                peer_cert_header=peer_cert_header.lower() if peer_cert_header else None,
                route_header=route_header.lower() if route_header else None,
                cookie_forwarded=cookie_forwarded, metadata=metadata)
        self.adapter = adapter
        #: read -> decide -> render -> record, shared with every other transport
        self.edge = CheckEdge(engine, self.adapter, CheckRecorder(engine.metrics, decision_log))
        #: what each parsed request is answered with, run in a task of its own: the check
        #: edge's answer. A server carrying another protocol may replace it (e.g. to answer
        #: requests that are no check without counting them as checks); a bound method stored
        #: once, so the hot path builds none per request
        self.answer: Callable[[_Message], Coroutine[Any, Any, bytes]] = self.edge.answer
        self.limits = limits or HttpLimits()
        self.limits.check()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[bytes]] = set()
        #: the loop serving this listener (set by start; checks are started on it)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        metrics = engine.metrics
        self.guard = ConnectionGuard(PORT_LABEL, self.limits.max_connections,
                                     metrics.connections, metrics.connections_refused)
        self.closed = metrics.connections_closed
        self.reading_paused = metrics.reading_paused.labels(PORT_LABEL)
        self._sweeper = DeadlineSweeper(
            lambda: self.connections,
            tick=min(1.0, self.limits.head_timeout / 4, self.limits.idle_timeout / 4),
            closed=metrics.connections_closed, port_label=PORT_LABEL)
        #: bytes of requests held by all connections (see HttpLimits.max_buffered_bytes)
        self.budget = ByteBudget(self.limits.max_buffered_bytes, lambda: len(self.connections))
        self.port = 0

    def charge(self, size: int, holder: int) -> bool:
        """Hold ``size`` more bytes of requests for a connection now holding ``holder`` bytes;
        False: refuse that connection (:class:`~extauthz.netlimits.ByteBudget`)."""
        return self.budget.charge(size, holder)

    def release(self, size: int) -> None:
        """Bytes of requests no longer held."""
        self.budget.release(size)

    @property
    def buffered(self) -> int:
        """Bytes of requests held by all connections (HttpLimits.max_buffered_bytes)."""
        return self.budget.held

    def _protocol(self) -> asyncio.BaseProtocol:
        if not self.guard.admit():
            return Refused()
        return _Connection(self)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host, port, reuse_port=False, backlog=1024)
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._sweeper.start()
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, wait up to ``grace`` seconds for checks in flight, close the rest."""
        if self._server is None:
            return
        self._server.close()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        await self._sweeper.stop()
        for conn in list(self.connections):
            conn.closing = True
            if conn.transport is not None:
                # abort: an orderly close waits for a client that may never read
                conn.transport.abort()
        await self._server.wait_closed()
        self._server = None
