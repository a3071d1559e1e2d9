"""A real OTLP trace receiver for the tests: OTLP/gRPC (what Envoy's OpenTelemetry tracer speaks)
and OTLP/HTTP protobuf (``POST /v1/traces``), both decoding ``ExportTraceServiceRequest`` with the
``opentelemetry-proto`` definitions and keeping every span received.

The OpenTelemetry Collector itself does not install from the registries this project can use (no
PyPI, npm or Debian package ships the ``otelcol`` binary), so this stands in for it: the same wire
protocol, decoded by the reference protobuf definitions, and nothing else.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from extauthz.demo.background import BackgroundApp


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in lowercase hex, as in ``traceparent``)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    protocol: str  # "grpc" or "http": how it arrived


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class OtlpReceiver:
    """Both OTLP transports on free 127.0.0.1 ports; ``spans`` grows as exports arrive."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._http: BackgroundApp | None = None
        self.grpc_port = 0
        self.http_port = 0

    # -- decoding --------------------------------------------------------------------------
    def _store(self, request: Any, protocol: str) -> None:
        found = []
        for resource_spans in request.resource_spans:
            service = next((_value(a.value) for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(
                        service=service, name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind, protocol=protocol,
                        attributes={a.key: _value(a.value) for a in span.attributes}))
        with self._lock:
            self.requests += 1
            self.spans.extend(found)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        receiver = self

        class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._store(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(), server)
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server

        async def export(request: web.Request) -> web.Response:
            message = trace_service_pb2.ExportTraceServiceRequest()
            message.ParseFromString(await request.read())
            receiver._store(message, "http")
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=body, content_type="application/x-protobuf")

        def app() -> web.Application:
            application = web.Application()
            application.router.add_post("/v1/traces", export)
            return application

        self._http = BackgroundApp(app, name="otlp").start()
        self.http_port = self._http.port
        return self

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0.5)
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------
    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[ReceivedSpan]:
        """Wait until some received span satisfies ``predicate``; return all that do."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [s for s in self.spans if predicate(s)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
