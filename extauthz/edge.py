"""The check edge: read -> view -> ``Engine.check`` -> record -> render, for every transport.

One function decides a request whatever carried it (:meth:`CheckEdge.answer`); a transport is a
thin :class:`Adapter` around it, which only reads its request into a
:class:`~extauthz.types.RequestView` and renders the :class:`~extauthz.decision.Decision` into
its own encoding (OPA-Envoy's neutral core with thin transport adapters):

==================  ============================  ==========================================
adapter             reads                         renders
==================  ============================  ==========================================
:data:`GRPC`        a CheckRequest message        a CheckResponse message (gRPC servicer)
:data:`GRPC_BYTES`  a serialized CheckRequest     a serialized CheckResponse (a gRPC call
                                                  carried in an HTTP body)
:data:`DECISIONS`   a CheckRequest message        the Decision itself (``extauthz check``,
                                                  ``extauthz test``)
``HttpAdapter``     an HTTP ext_authz request     an HTTP/1.1 answer (``http_authz``)
==================  ============================  ==========================================

Failing closed: :meth:`CheckEdge.answer` never raises. ``Engine.check`` never raises either (its
own guard maps every error of the decision to a deny); the edge's single guard covers what is
the transport's: a request that cannot be read is denied with its own status (400) and anything
unexpected (reading, rendering) becomes a 503 ``internal_error`` deny, rendered by the same
adapter. Every answer is recorded once (``checks_total``, ``check_duration_seconds``, decision
log) when the edge has a recorder.

Per check the edge allocates nothing of its own beyond its coroutine: the adapter's methods
are bound once, at construction.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.decision import Decision, from_error
from extauthz.errors import BadRequestError, CheckError, Reason
from extauthz.metrics import NO_ROUTE_LABEL
from extauthz.request import from_check_request
from extauthz.respond.grpc import to_check_response
from extauthz.respond.grpc_wire import encode as encode_check_response
from extauthz.types import RequestView

if TYPE_CHECKING:
    from extauthz.explain import Trace
    from extauthz.metrics import CheckRecorder
    from extauthz.pipeline import Engine

__all__ = ["DECISIONS", "GRPC", "GRPC_BYTES", "Adapter", "CheckEdge", "decide"]

log = logging.getLogger("extauthz.edge")

RawT = TypeVar("RawT")
OutT = TypeVar("OutT")
RawT_contra = TypeVar("RawT_contra", contravariant=True)
OutT_co = TypeVar("OutT_co", covariant=True)


class Adapter(Protocol[RawT_contra, OutT_co]):
    """What a transport gives the edge: how to read its request, how to encode a decision."""

    def read(self, raw: RawT_contra) -> RequestView:
        """The view of ``raw``; raises CheckError (its status is the answer) when unreadable."""

    def render(self, decision: Decision, raw: RawT_contra) -> OutT_co:
        """``decision`` in this transport's encoding (``raw``: the request it answers)."""


class CheckEdge(Generic[RawT, OutT]):
    """Answers requests of one transport from an :class:`~extauthz.pipeline.Engine`."""

    __slots__ = ("_read", "_recorder", "_render", "engine")

    def __init__(self, engine: Engine, adapter: Adapter[RawT, OutT],
                 recorder: CheckRecorder | None = None) -> None:
        self.engine = engine
        # bound once: an attribute read of a method builds a bound-method object every time
        self._read = adapter.read
        self._render = adapter.render
        self._recorder = recorder

    async def answer(self, raw: RawT, trace: Trace | None = None) -> OutT:
        """Read ``raw``, decide, render and record; never raises (fail closed).

        ``trace``: record why (``extauthz check --explain``, ``extauthz test``).
        """
        started = time.perf_counter()
        view: RequestView | None = None
        try:
            view = self._read(raw)
            decision = await self.engine.check(view, trace)
            out = self._render(decision, raw)
        except Exception as exc:  # this transport's one fail-closed guard
            decision = _failed(exc, view, trace)
            out = self._render(decision, raw)
        recorder = self._recorder
        if recorder is not None:
            recorder.finished(view, decision, time.perf_counter() - started)
        return out

    def refused(self, raw: RawT) -> OutT:
        """The 503 answer of a check that could not run to its end (its task was cancelled,
        e.g. at shutdown), recorded like any other answer (its duration unknown: 0)."""
        decision = from_error(RuntimeError(), NO_ROUTE_LABEL)
        out = self._render(decision, raw)
        if self._recorder is not None:
            self._recorder.finished(None, decision, 0.0)
        return out


def _failed(exc: Exception, view: RequestView | None, trace: Trace | None) -> Decision:
    """The deny of what escaped reading, deciding or rendering."""
    if view is None and isinstance(exc, CheckError):
        # the request could not be read: its own status (400), not an internal error
        if trace is not None:
            trace.notes.append(f"the request could not be read: {exc.reason.value}")
        return from_error(exc, NO_ROUTE_LABEL)
    if view is None:
        log.exception("could not read a request (denied)")
    else:
        log.exception("could not render an answer (denied)")
    return from_error(RuntimeError(), NO_ROUTE_LABEL)


class _Grpc:
    """gRPC: a CheckRequest message in, a CheckResponse message out."""

    __slots__ = ()

    #: the reader itself (no wrapper frame on the hot path)
    read = staticmethod(from_check_request)

    @staticmethod
    def render(decision: Decision, raw: Any) -> Any:
        return to_check_response(decision)


class _GrpcBytes:
    """A serialized CheckRequest in, a serialized CheckResponse out: the gRPC protocol carried
    as an HTTP body (Envoy's ``grpc_http1_reverse_bridge`` in front of an HTTP server)."""

    __slots__ = ()

    @staticmethod
    def read(raw: bytes) -> RequestView:
        try:
            request = external_auth_pb2.CheckRequest.FromString(raw)
        except DecodeError:
            raise BadRequestError(Reason.BAD_REQUEST, "the body is not a CheckRequest") from None
        return from_check_request(request)

    @staticmethod
    def render(decision: Decision, raw: bytes) -> bytes:
        # written directly, not built as a message and serialized (extauthz.respond.grpc_wire)
        return encode_check_response(decision)


class _Decisions:
    """``extauthz check`` and ``extauthz test``: a CheckRequest in (built as Envoy sends it), the
    Decision itself out (printed or compared)."""

    __slots__ = ()

    read = staticmethod(from_check_request)

    @staticmethod
    def render(decision: Decision, raw: Any) -> Decision:
        return decision


#: gRPC ``Authorization.Check`` (:class:`~extauthz.servicer.AuthorizationServicer`)
GRPC: Adapter[Any, Any] = _Grpc()
#: a serialized CheckRequest in, a serialized CheckResponse out
GRPC_BYTES: Adapter[bytes, bytes] = _GrpcBytes()
#: a CheckRequest in, its Decision out (the offline tools)
DECISIONS: Adapter[Any, Decision] = _Decisions()


async def decide(engine: Engine, request: Any, trace: Trace | None = None) -> Decision:
    """Decide one CheckRequest exactly as a gRPC Check would, without recording it; never
    raises. ``trace``: record why (``--explain``)."""
    return await CheckEdge(engine, DECISIONS).answer(request, trace)
