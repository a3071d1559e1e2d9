"""The gRPC Check API served by Envoy itself, bridged to extauthz (``--grpc-server envoy``).

Modules: :mod:`~extauthz.grpcfront.codec` (the bridged bytes), :mod:`~extauthz.grpcfront.handler`
(the internal endpoint: bytes -> engine -> bytes), :mod:`~extauthz.grpcfront.bootstrap` (the
Envoy configuration), :mod:`~extauthz.grpcfront.supervisor` (the Envoy child process),
:mod:`~extauthz.grpcfront.front` (the two together, for :mod:`extauthz.server`),
:mod:`~extauthz.grpcfront.binary` (where the Envoy binary is). docs/grpc-front.md has the model.
"""
