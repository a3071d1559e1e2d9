"""The gRPC ``envoy.service.auth.v3.Authorization`` servicer.

``Check`` never raises: reading the request, deciding and building the response are all inside
one guard, and anything unexpected becomes a fail-closed 503 deny.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from extauthz import tracing
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.decision import Decision, from_error
from extauthz.decisionlog import DecisionLog
from extauthz.errors import CheckError
from extauthz.metrics import NO_ROUTE_LABEL, CheckRecorder
from extauthz.pipeline import Engine
from extauthz.request import from_check_request
from extauthz.types import RequestView
from extauthz.wire import to_check_response

log = logging.getLogger("extauthz.servicer")


async def decide_request(engine: Engine, request: Any) -> tuple[RequestView | None, Decision]:
    """Read ``request`` (a CheckRequest) and decide it; never raises.

    Returns the view too (None when the request could not be read) for the decision log.
    """
    try:
        view = from_check_request(request)
    except CheckError as exc:
        return None, from_error(exc, NO_ROUTE_LABEL)
    except Exception:
        log.exception("could not read a CheckRequest (denied)")
        return None, from_error(RuntimeError(), NO_ROUTE_LABEL)
    return view, await engine.check(view)


async def decide(engine: Engine, request: Any) -> Decision:
    """Read ``request`` (a CheckRequest) and decide it; never raises."""
    return (await decide_request(engine, request))[1]


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Answers Envoy's ext_authz ``Check`` calls from an :class:`Engine`."""

    def __init__(self, engine: Engine, decision_log: DecisionLog | None = None) -> None:
        self.engine = engine
        self._recorder = CheckRecorder(engine.metrics, decision_log)

    async def Check(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        view: RequestView | None = None
        if tracing.state.tracer is not None:
            # Envoy's ext_authz span is in the call metadata, not in the CheckRequest headers
            metadata = dict(context.invocation_metadata() or ())
            tracing.set_transport_parent(metadata.get("traceparent"))
        try:
            view, decision = await decide_request(self.engine, request)
            response = to_check_response(decision)
        except Exception:
            log.exception("could not build a CheckResponse (denied)")
            decision = from_error(RuntimeError(), NO_ROUTE_LABEL)
            response = to_check_response(decision)
        elapsed = time.perf_counter() - started
        self._recorder.finished(view, decision, elapsed)
        return response
