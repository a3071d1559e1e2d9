"""extauthz: external authorization for Envoy over the ext_authz v3 gRPC API.

The request pipeline (see README, "Architecture")::

    CheckRequest -> request.RequestView -> routing.RouteTable.match -> authn (Identity)
                 -> authz (policy) -> decision.Decision -> wire.CheckResponse
"""

__version__ = "0.1.0"
