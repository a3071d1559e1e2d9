"""The gRPC encoding of a decision: Decision -> ``envoy.service.auth.v3.CheckResponse``.

The only builder of CheckResponse protos; :mod:`extauthz.respond.http` renders the same decision
into Envoy's HTTP ext_authz answer, and tests/unit/test_respond.py holds both to one table.

Envoy facts this relies on (verified against Envoy 1.40, see DESIGN.md §4):

* A deny needs a non-OK ``status`` **and** a ``denied_response`` with an explicit HTTP status;
  without the latter Envoy answers 403 even for UNAUTHENTICATED.
* ``ok_response.headers`` ignores ``append_action`` in 1.40: the deprecated ``append`` BoolValue is
  set explicitly (``false`` = overwrite-or-add).
* ``headers_to_remove`` cannot remove pseudo-headers or ``host``; those are never listed
  (:func:`~extauthz.respond.removal.removable`, shared with the HTTP renderer).
* ``denied_response.headers``: a header with ``append: true`` is dropped by Envoy 1.40; a repeated
  header (several ``WWW-Authenticate`` challenges) is sent with ``append`` unset, which makes Envoy
  apply ``append_action``'s default, APPEND_IF_EXISTS_OR_ADD (verified end to end).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2, wrappers_pb2

from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz._proto.google.rpc import status_pb2
from extauthz.decision import Decision
from extauthz.respond.removal import removable

__all__ = ["to_check_response"]

_OVERWRITE = wrappers_pb2.BoolValue(value=False)


def _header(key: str, value: str, *, append: bool) -> Any:
    if append:
        # Envoy 1.40 drops a denied_response header whose deprecated `append` is true; leaving
        # `append` unset makes it honour append_action, whose default is APPEND_IF_EXISTS_OR_ADD.
        return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append=_OVERWRITE
    )


def to_check_response(decision: Decision) -> Any:
    """Build the CheckResponse that makes Envoy carry out ``decision``."""
    response = external_auth_pb2.CheckResponse()
    response.status.CopyFrom(status_pb2.Status(code=int(decision.grpc_code)))
    if decision.allowed:
        ok = response.ok_response
        ok.headers.extend(_header(k, v, append=False) for k, v in decision.upstream_headers)
        ok.headers_to_remove.extend(removable(decision.remove_headers))
        ok.query_parameters_to_remove.extend(decision.remove_query)
        # RateLimit fields for the client: append_action is honoured here, and its default
        # (APPEND_IF_EXISTS_OR_ADD) keeps an upstream's own RateLimit items next to ours
        ok.response_headers_to_add.extend(
            _header(k, v, append=True) for k, v in decision.response_headers)
    else:
        response.status.message = decision.reason.value
        denied = response.denied_response
        denied.status.code = decision.http_status  # type: ignore[assignment]
        # Repeated names (several WWW-Authenticate challenges) are appended, not overwritten.
        seen: set[str] = set()
        for key, value in decision.response_headers:
            denied.headers.append(_header(key, value, append=key in seen))
            seen.add(key)
        denied.body = decision.body
    if decision.dynamic_metadata:
        response.dynamic_metadata.CopyFrom(_struct(decision.dynamic_metadata))
    return response


def _struct(data: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s

