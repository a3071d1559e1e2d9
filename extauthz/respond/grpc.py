"""The gRPC encoding of a decision: Decision -> ``envoy.service.auth.v3.CheckResponse``.

What a CheckResponse says is decided **once**, by :func:`plan`; two encoders carry the plan out:
:func:`to_check_response` builds the protobuf message (the grpc.aio servicer answers with it) and
:func:`extauthz.respond.grpc_wire.encode` writes its serialized bytes directly (the transports
that answer with bytes, :data:`extauthz.edge.GRPC_BYTES`). Neither decides anything of its own:
they only lay the plan's fields out, so the two cannot drift. tests/unit/test_grpc_wire.py
holds the encoders to parse-equality (the 18-row table and a property test over generated
decisions). :mod:`extauthz.respond.http` renders the same decision into Envoy's HTTP ext_authz
answer, and tests/unit/test_respond.py holds both to one table.

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

from collections.abc import Mapping
from typing import Any, NamedTuple

from google.protobuf import struct_pb2, wrappers_pb2

from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.decision import Decision
from extauthz.respond.removal import removable

__all__ = ["Plan", "plan", "to_check_response"]

_OVERWRITE = wrappers_pb2.BoolValue(value=False)
_NO_FLAGS: tuple[bool, ...] = ()


class Plan(NamedTuple):
    """Everything a CheckResponse says, field by field (the only place that decides it).

    Always present: ``status`` (its ``code``; ``message`` when not empty) and exactly one of
    ``ok_response`` (``allowed``) or ``denied_response``, even when empty.
    """

    #: ``status.code`` (google.rpc.Code)
    code: int
    #: ``status.message``: the reason of a deny ("" on allow: unset)
    message: str
    #: ``ok_response`` (True) or ``denied_response`` (False)
    allowed: bool
    #: ``ok_response.headers`` (set on the upstream request) or ``denied_response.headers``
    #: (for the client)
    headers: tuple[tuple[str, str], ...]
    #: per entry of ``headers``: True = ``append`` explicitly ``false`` (overwrite), False =
    #: ``append`` unset (Envoy's default APPEND_IF_EXISTS_OR_ADD)
    overwrite: tuple[bool, ...]
    #: ``ok_response.headers_to_remove``
    headers_to_remove: tuple[str, ...]
    #: ``ok_response.query_parameters_to_remove``
    query_to_remove: tuple[str, ...]
    #: ``ok_response.response_headers_to_add`` (``append`` unset)
    response_headers_to_add: tuple[tuple[str, str], ...]
    #: ``denied_response.status.code``
    http_status: int
    #: ``denied_response.body``
    body: str
    #: ``dynamic_metadata`` (a google.protobuf.Struct, as ``Struct.update`` reads it); None: unset
    metadata: Mapping[str, Any] | None


#: builds a Plan without NamedTuple's Python-level ``__new__`` (a third of plan's cost); every
#: field is given, in order, below
_new = tuple.__new__


def plan(decision: Decision) -> Plan:
    """What the CheckResponse that makes Envoy carry out ``decision`` says."""
    metadata = decision.dynamic_metadata or None
    if decision.allowed:
        headers = decision.upstream_headers
        # Envoy 1.40 ignores append_action on ok_response.headers: an explicit append=false.
        # RateLimit fields for the client (response_headers_to_add): append_action is honoured
        # there, and its default (APPEND_IF_EXISTS_OR_ADD) keeps an upstream's own RateLimit
        # items next to ours
        return _new(Plan, (int(decision.grpc_code), "", True, headers, (True,) * len(headers),
                           removable(decision.remove_headers), decision.remove_query,
                           decision.response_headers, 0, "", metadata))
    # Repeated names (several WWW-Authenticate challenges) are appended, not overwritten:
    # Envoy 1.40 drops a denied_response header whose deprecated `append` is true; leaving it
    # unset makes Envoy honour append_action, whose default is APPEND_IF_EXISTS_OR_ADD.
    seen: set[str] = set()
    overwrite = []
    for key, _ in decision.response_headers:
        overwrite.append(key not in seen)
        seen.add(key)
    return _new(Plan, (int(decision.grpc_code), decision.reason.value, False,
                       decision.response_headers, tuple(overwrite), (), (), (),
                       decision.http_status, decision.body, metadata))


def _header(key: str, value: str, overwrite: bool) -> Any:
    if overwrite:
        return base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value), append=_OVERWRITE)
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def to_check_response(decision: Decision) -> Any:
    """Build the CheckResponse message that makes Envoy carry out ``decision`` (its
    :func:`plan`)."""
    p = plan(decision)
    response = external_auth_pb2.CheckResponse()
    response.status.code = p.code
    if p.message:
        response.status.message = p.message
    headers = [_header(k, v, o) for (k, v), o in zip(p.headers, p.overwrite, strict=True)]
    if p.allowed:
        ok = response.ok_response
        ok.SetInParent()  # present even when empty
        ok.headers.extend(headers)
        ok.headers_to_remove.extend(p.headers_to_remove)
        ok.query_parameters_to_remove.extend(p.query_to_remove)
        ok.response_headers_to_add.extend(
            _header(k, v, False) for k, v in p.response_headers_to_add)
    else:
        denied = response.denied_response
        denied.status.code = p.http_status  # type: ignore[assignment]
        denied.headers.extend(headers)
        denied.body = p.body
    if p.metadata is not None:
        response.dynamic_metadata.CopyFrom(_struct(p.metadata))
    return response


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s
