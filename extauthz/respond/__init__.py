"""The respond layer: one decision, built once, rendered into each transport's encoding.

The neutral core (OPA-Envoy's design): :mod:`~extauthz.respond.allow` builds the allowed
:class:`~extauthz.decision.Decision` from route + identity + request view (identity headers,
credential and spoofed-header stripping, cookie rewriting, query stripping, metadata);
:mod:`~extauthz.decision` builds denials (``deny`` / ``from_error``) with the challenges of
:mod:`~extauthz.respond.challenges`. Two thin renderers encode a decision side by side:

* :func:`~extauthz.respond.grpc.to_check_response`: gRPC ``CheckResponse`` (and
  :func:`~extauthz.respond.grpc_wire.encode`: the same, serialized directly; both lay out
  :func:`~extauthz.respond.grpc.plan`);
* :func:`~extauthz.respond.http.render`: Envoy's HTTP ext_authz answer (HTTP/1.1 bytes).

tests/unit/test_respond.py renders one table of decisions through both and states what each
must say once. docs/respond.md describes the layer.

The package imports none of its modules: the neutral core (:mod:`extauthz.pipeline`) imports
``allow`` and ``challenges`` only, and never loads an encoding (protobuf, HTTP framing).
"""

