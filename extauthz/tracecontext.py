"""The W3C trace context of the transport call of the check in progress (a context variable).

Set by :func:`extauthz.tracing.set_transport_parent` (the gRPC servicer: Envoy's ext_authz span
travels in the call metadata), read by :mod:`extauthz.otel` as the check span's parent. Its own
module so that neither of those two imports the other's runtime.
"""

from __future__ import annotations

import contextvars

#: the ``traceparent`` of the transport call, or None
transport_parent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "extauthz_transport_parent", default=None)
