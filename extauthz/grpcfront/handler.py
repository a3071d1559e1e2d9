"""The internal endpoint behind the supervised Envoy: bridged gRPC calls -> the engine.

One :class:`BridgeServer` is the httptools server of the HTTP ext_authz transport
(:class:`~extauthz.http_authz.HttpAuthzServer`: its connection handling, bounds and metrics)
carrying another protocol: what Envoy's ``grpc_http1_reverse_bridge`` sends (see
:mod:`extauthz.grpcfront.codec`). Per method path:

* ``Authorization/Check``: the check edge (:class:`~extauthz.edge.CheckEdge`) with the
  :data:`~extauthz.edge.GRPC_BYTES` adapter: bytes -> CheckRequest -> ``Engine.check`` ->
  CheckResponse -> bytes, sent ``200`` with :data:`~extauthz.grpcfront.codec.CONTENT_TYPE`;
  counted and logged like every check. A body that is not a CheckRequest is the edge's 400
  ``bad_request`` deny, as any unreadable request;
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from extauthz import tracing
from extauthz.decision import Decision
from extauthz.edge import GRPC_BYTES
from extauthz.grpcfront import codec
from extauthz.http_authz import HttpAuthzServer, _Message
from extauthz.types import RequestView

log = logging.getLogger("extauthz.grpcfront")

#: the serving status of a health service name (None: unknown service)
HealthLookup = Callable[[str], int | None]

_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 400: b"HTTP/1.1 400 Bad Request\r\n",
                 404: b"HTTP/1.1 404 Not Found\r\n",
                 415: b"HTTP/1.1 415 Unsupported Media Type\r\n",
                 503: b"HTTP/1.1 503 Service Unavailable\r\n"}
_CONTENT_TYPE_LINE = f"content-type: {codec.CONTENT_TYPE}\r\n".encode("ascii")


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


@dataclass(frozen=True, slots=True)
class BridgeAdapter:
    """The check edge's adapter of the bridge: a parsed HTTP/1.1 request whose body is a
    serialized CheckRequest in (:data:`~extauthz.edge.GRPC_BYTES`), the whole HTTP/1.1 answer
    with the serialized CheckResponse out."""

    def read(self, message: _Message) -> RequestView:
        """The view of the CheckRequest in the body (BadRequestError when it is none)."""
        return GRPC_BYTES.read(bytes(message.body))

    def render(self, decision: Decision, message: _Message) -> bytes:
        """``200`` with the serialized CheckResponse of ``decision``."""
        return http_response(200, GRPC_BYTES.render(decision, b""), message.keep_alive)


class BridgeServer(HttpAuthzServer):
    """Serves the bridged gRPC methods (Check, Health) on a Unix socket."""

    def __init__(self, *args: Any, health: HealthLookup, **kwargs: Any) -> None:
        super().__init__(*args, adapter=BridgeAdapter(), **kwargs)
        self.health = health
        #: set on SIGTERM: a check that arrives now is refused (503: Envoy answers UNAVAILABLE,
        #: the client's Envoy fails it closed), as grpc.aio refuses new calls once stopping;
        #: checks already in flight finish
        self.draining = False
        # checks go to the edge; health and everything else is answered here, not counted
        self.answer = self._answer
        self._check = self.edge.answer

    async def _answer(self, message: _Message) -> bytes:
        """The answer to one bridged call (run in a task of its own by the connection)."""
        keep_alive = message.keep_alive
        if message.method != "POST":
            return http_response(404, b"", keep_alive)
        if message.headers.get("content-type") != codec.CONTENT_TYPE:
            return http_response(415, b"", keep_alive)
        path = message.url.decode("latin-1")
        if path == codec.CHECK_PATH:
            if self.draining:
                return http_response(503, b"", keep_alive)
            if tracing.state.tracer is not None:
                # Envoy's ext_authz span comes as the call's traceparent: the check's parent
                # (set inside this check's own task: it does not leak into the next one)
                tracing.set_transport_parent(message.headers.get("traceparent"))
            return await self._check(message)
        if path in (codec.HEALTH_CHECK_PATH, codec.HEALTH_WATCH_PATH):
            return self._health(message)
        return http_response(404, b"", keep_alive)  # Envoy: UNIMPLEMENTED

    def _health(self, message: _Message) -> bytes:
        try:
            service = codec.decode_health_service(bytes(message.body))
        except DecodeError:
            return http_response(400, b"", message.keep_alive)
        status = self.health(service)
        if status is None:
            return http_response(404, b"", message.keep_alive)
        return http_response(200, codec.encode_health_response(status), message.keep_alive)

    async def start_unix(self, path: str) -> None:
        """Listen on the Unix socket ``path`` (its directory must be private: see the module
        docstring)."""
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._protocol, path, backlog=1024)
        self._sweeper.start()
