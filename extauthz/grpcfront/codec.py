"""The bytes of the bridged protocol: which gRPC method a request is, and the messages.

Envoy's ``grpc_http1_reverse_bridge`` (``withhold_grpc_frames: true``) turns one unary gRPC call
into one HTTP/1.1 ``POST`` whose path is the gRPC method path and whose body is the bare
serialized request message (no 5-byte gRPC frame), with ``content-type`` set to
:data:`CONTENT_TYPE`. The answer must be ``200`` with that same content type and the bare
serialized response message; Envoy frames it and adds ``grpc-status: 0`` (docs/grpc-front.md
says what Envoy does with anything else).

The health messages (``grpc.health.v1``) are built here in a private descriptor pool instead of
importing ``grpc_health``: that package comes with grpcio, which the Envoy front does not need,
and a second definition of the same message names in the default pool would clash with
``grpc_health`` when both servers' code is loaded.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2

__all__ = [
    "CHECK_PATH",
    "CONTENT_TYPE",
    "HEALTH_CHECK_PATH",
    "HEALTH_WATCH_PATH",
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "decode_check_request",
    "decode_health_service",
    "encode_health_response",
]

#: what the reverse bridge sends and requires back. Not ``application/grpc``: nothing but the
#: bridge speaks it, and a request in any other content type is refused.
CONTENT_TYPE = "application/x-extauthz-bridge+proto"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch"

#: ``grpc.health.v1.HealthCheckResponse.ServingStatus`` values
SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3


def _health_messages() -> tuple[Any, Any]:
    """``(HealthCheckRequest, HealthCheckResponse)`` classes from a private pool."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="extauthz/grpcfront/health.proto", package="grpc.health.v1", syntax="proto3")
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING,
                      label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", 0), ("SERVING", SERVING), ("NOT_SERVING", NOT_SERVING),
                         ("SERVICE_UNKNOWN", SERVICE_UNKNOWN)):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=field.TYPE_ENUM,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                       label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.health.v1.HealthCheckRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.health.v1.HealthCheckResponse")))


_HealthCheckRequest, _HealthCheckResponse = _health_messages()
#: the four possible answers, serialized once
_HEALTH_BYTES = {status: _HealthCheckResponse(status=status).SerializeToString()
                 for status in (SERVING, NOT_SERVING, SERVICE_UNKNOWN)}


def decode_check_request(body: bytes) -> Any:
    """The ``envoy.service.auth.v3.CheckRequest`` in ``body`` (raises
    ``google.protobuf.message.DecodeError`` when it is not one)."""
    return external_auth_pb2.CheckRequest.FromString(body)


def decode_health_service(body: bytes) -> str:
    """The service name of a serialized ``HealthCheckRequest`` (raises DecodeError)."""
    return str(_HealthCheckRequest.FromString(body).service)


def encode_health_response(status: int) -> bytes:
    """A serialized ``HealthCheckResponse`` with ``status``."""
    cached = _HEALTH_BYTES.get(status)
    return cached if cached is not None else bytes(
        _HealthCheckResponse(status=status).SerializeToString())
