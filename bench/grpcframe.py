"""CheckRequests as Envoy 1.40 sends them, serialized with the 5-byte gRPC message prefix.

The request mirrors what Envoy puts in ``attributes`` for an HTTP/1.1 request through the
benchmark listener: every header including the pseudo-headers, the path with its query, the
stream id, the peer addresses, the per-route ``context_extensions``. h2load posts the file as is
(``-d``), so the server parses exactly the bytes Envoy would send.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"


def check_request(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    host: str = "bench.local",
    body: bytes = b"",
    route: str | None = None,
) -> Any:
    """A CheckRequest proto for one HTTP request."""
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    src = attrs.source.address.socket_address
    src.address, src.port_value = "127.0.0.1", 54321
    dst = attrs.destination.address.socket_address
    dst.address, dst.port_value = "127.0.0.1", 10000
    http = attrs.request.http
    http.id = "1234567890123456789"
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    all_headers = {
        ":authority": host, ":path": path, ":method": method, ":scheme": "http",
        "user-agent": "wrk", "x-forwarded-proto": "http",
        "x-request-id": "5f0c6b9e-8a51-4c1a-9d0f-0d3c2f1b7a11",
    }
    all_headers.update({k.lower(): v for k, v in headers.items()})
    if body:
        all_headers["content-length"] = str(len(body))
        http.size = len(body)
        http.raw_body = body
    http.headers.update(all_headers)
    attrs.request.time.GetCurrentTime()
    if route is not None:
        attrs.context_extensions["route"] = route
    return request


def frame(message: Any) -> bytes:
    """One uncompressed gRPC message: flag 0, 4-byte big-endian length, the bytes."""
    payload: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def write_frame(path: Path, message: Any) -> Path:
    path.write_bytes(frame(message))
    return path
