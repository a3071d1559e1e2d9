"""The internal endpoint behind the supervised Envoy: bridged gRPC calls -> the engine.

One :class:`BridgeServer` is the httptools server of the HTTP ext_authz transport
(:class:`~extauthz.http_authz.HttpAuthzServer`: its connection handling, bounds and metrics)
reading another request format: what Envoy's ``grpc_http1_reverse_bridge`` sends (see
:mod:`extauthz.grpcfront.codec`). Per method path:

* ``Authorization/Check``: bytes -> CheckRequest (:func:`extauthz.request.from_check_request`)
  -> :meth:`Engine.check` -> CheckResponse (:func:`extauthz.wire.to_check_response`) -> bytes,
  ``200`` with :data:`~extauthz.grpcfront.codec.CONTENT_TYPE`; counted and logged like a gRPC
  check;
* ``Health/Check``: the serving status of the service asked about (the same state the grpc.aio
  server's health service answers from); an unknown service is answered ``404``, which Envoy
  turns into ``UNIMPLEMENTED`` (there is no HTTP status it maps to ``NOT_FOUND``);
* ``Health/Watch``: a server-streaming call the unary bridge cannot carry: answered with the
  current status as one message, after which Envoy ends the stream with OK
  (docs/grpc-front.md "Watch");
* anything else (or not ``POST`` with the bridge's content type): ``404``/``415``, which Envoy
  turns into a gRPC error.

SECURITY: this endpoint trusts everything in the CheckRequest it receives (the client address,
the peer certificate, the route name). It listens only on a Unix socket in a private (0700)
directory (:mod:`extauthz.grpcfront.front`), never on a TCP port and never on the HTTP
ext_authz port, where Envoy forwards the *client's* path and body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from extauthz import tracing
from extauthz.decision import Decision, GrpcCode, Outcome, from_error
from extauthz.errors import CheckError, Reason
from extauthz.grpcfront import codec
from extauthz.http_authz import HttpAuthzServer, _Message
from extauthz.metrics import NO_ROUTE_LABEL
from extauthz.request import from_check_request
from extauthz.types import RequestView
from extauthz.wire import to_check_response

log = logging.getLogger("extauthz.grpcfront")

#: the serving status of a health service name (None: unknown service)
HealthLookup = Callable[[str], int | None]

_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 400: b"HTTP/1.1 400 Bad Request\r\n",
                 404: b"HTTP/1.1 404 Not Found\r\n",
                 503: b"HTTP/1.1 503 Service Unavailable\r\n",
                 415: b"HTTP/1.1 415 Unsupported Media Type\r\n"}
_CONTENT_TYPE_LINE = f"content-type: {codec.CONTENT_TYPE}\r\n".encode("ascii")


@dataclass(frozen=True, slots=True)
class _Reply(Decision):
    """An answer that is no check decision (health, a refused request): sent as is, not
    counted or logged as a check."""

    status: int = 200
    payload: bytes = b""


def _reply(status: int, payload: bytes = b"") -> _Reply:
    return _Reply(outcome=Outcome.DENY, http_status=status, grpc_code=GrpcCode.OK,
                  reason=Reason.BAD_REQUEST, route=NO_ROUTE_LABEL, status=status,
                  payload=payload)


def http_response(status: int, payload: bytes, keep_alive: bool) -> bytes:
    """One HTTP/1.1 response with the bridge's content type. Envoy requires it on a 200; on
    another status it makes Envoy answer the gRPC status of that HTTP status (404:
    UNIMPLEMENTED, 400: INTERNAL, 503: UNAVAILABLE) instead of UNKNOWN ("upstream responded
    with no content-type header")."""
    head = [_STATUS_LINES.get(status, b"HTTP/1.1 400 Bad Request\r\n"), _CONTENT_TYPE_LINE]
    head.append(b"content-length: %d\r\n" % len(payload))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + payload


async def _with_parent(traceparent: str | None,
                       check: Coroutine[Any, Any, Decision]) -> Decision:
    """Run ``check`` with Envoy's ext_authz span (the call's ``traceparent``) as its parent;
    inside the check's own task, so it does not leak into the next check of the connection."""
    tracing.set_transport_parent(traceparent)
    return await check


class BridgeServer(HttpAuthzServer):
    """Serves the bridged gRPC methods (Check, Health) on a Unix socket."""

    def __init__(self, *args: Any, health: HealthLookup, **kwargs: Any) -> None:
        super().__init__(*args, path_prefix="", **kwargs)
        self.health = health
        #: set on SIGTERM: a check that arrives now is refused (503: Envoy answers UNAVAILABLE,
        #: the client's Envoy fails it closed), as grpc.aio refuses new calls once stopping;
        #: checks already in flight finish
        self.draining = False

    def begin(self, message: _Message) -> tuple[RequestView | None,
                                                Decision | Coroutine[Any, Any, Decision]]:
        """The view and the check coroutine of one bridged call (or a reply at once)."""
        if message.method != "POST":
            return None, _reply(404)
        if message.headers.get("content-type") != codec.CONTENT_TYPE:
            return None, _reply(415)
        path = message.url.decode("latin-1")
        body = bytes(message.body)
        if path == codec.CHECK_PATH:
            if self.draining:
                return None, _reply(503)
            return self._check(message, body)
        if path in (codec.HEALTH_CHECK_PATH, codec.HEALTH_WATCH_PATH):
            return None, self._health(body)
        return None, _reply(404)  # Envoy: UNIMPLEMENTED

    def _check(self, message: _Message, body: bytes) -> tuple[
            RequestView | None, Decision | Coroutine[Any, Any, Decision]]:
        try:
            view = from_check_request(codec.decode_check_request(body))
        except DecodeError:
            return None, _reply(400)  # not a CheckRequest: Envoy answers a gRPC error
        except CheckError as exc:
            return None, from_error(exc, NO_ROUTE_LABEL)
        except Exception:
            log.exception("could not read a CheckRequest (denied)")
            return None, from_error(RuntimeError(), NO_ROUTE_LABEL)
        check = self.engine.check(view)
        if tracing.state.tracer is not None:
            return view, _with_parent(message.headers.get("traceparent"), check)
        return view, check

    def _health(self, body: bytes) -> _Reply:
        try:
            service = codec.decode_health_service(body)
        except DecodeError:
            return _reply(400)
        status = self.health(service)
        if status is None:
            return _reply(404)
        return _reply(200, codec.encode_health_response(status))

    def render(self, decision: Decision, keep_alive: bool, head: bool = False) -> bytes:
        """The HTTP/1.1 response of ``decision``: a serialized CheckResponse with 200."""
        if isinstance(decision, _Reply):
            return http_response(decision.status, decision.payload, keep_alive)
        payload = to_check_response(decision).SerializeToString()
        return http_response(200, payload, keep_alive)

    def record(self, view: RequestView | None, decision: Decision, elapsed: float) -> None:
        """Count and log checks; health answers and refused requests are not checks."""
        if not isinstance(decision, _Reply):
            super().record(view, decision, elapsed)

    async def start_unix(self, path: str) -> None:
        """Listen on the Unix socket ``path`` (its directory must be private: see the module
        docstring)."""
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._protocol, path, backlog=1024)
        self._sweeper.start()
