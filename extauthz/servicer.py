"""The gRPC ``envoy.service.auth.v3.Authorization`` servicer: a thin adapter on the check edge.

``Check`` never raises: :meth:`extauthz.edge.CheckEdge.answer` reads the CheckRequest, decides,
builds the CheckResponse and records the check, with one fail-closed guard (anything unexpected
becomes a 503 deny).
"""

from __future__ import annotations

from typing import Any

from extauthz import tracing
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.decisionlog import DecisionLog
from extauthz.edge import GRPC, CheckEdge
from extauthz.metrics import CheckRecorder
from extauthz.pipeline import Engine


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Answers Envoy's ext_authz ``Check`` calls from an :class:`Engine`."""

    def __init__(self, engine: Engine, decision_log: DecisionLog | None = None) -> None:
        self.engine = engine
        self.edge: CheckEdge[Any, Any] = CheckEdge(
            engine, GRPC, CheckRecorder(engine.metrics, decision_log))

    async def Check(self, request: Any, context: Any) -> Any:
        if tracing.state.tracer is not None:
            # Envoy's ext_authz span is in the call metadata, not in the CheckRequest headers
            metadata = dict(context.invocation_metadata() or ())
            tracing.set_transport_parent(metadata.get("traceparent"))
        return await self.edge.answer(request)
