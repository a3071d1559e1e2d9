"""The neutral allow result: route + identity + request view -> an allowed :class:`Decision`.

Everything an allowed request changes on its way upstream is decided here, once, for every
transport (the renderers in :mod:`extauthz.respond.grpc` and :mod:`extauthz.respond.http` only
encode it):

* the identity headers (``<prefix>subject``, ``method``, ``methods``, ``consumer``, ``scopes``,
  each authenticator's own) and the signed identity token;
* the client's copies of reserved headers, in every spelling an upstream may read as the same
  name, removed on every route (public ones included);
* on a route with ``strip_credentials``: the credential headers, query parameters and cookies
  of the route's methods removed (a ``Cookie`` header is rewritten without the credential);
* the dynamic metadata (route, identity, and a waived shadow denial).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from extauthz.decision import Decision, GrpcCode, Outcome
from extauthz.errors import AuthorizationError, BadRequestError, Reason
from extauthz.hygiene import (
    ReservedHeaders,
    canonical_names,
    header_spellings,
    identity_value_safe,
    query_hides,
    query_spellings,
    without_cookies,
)
from extauthz.metrics import NO_ROUTE_LABEL
from extauthz.types import Identity, RequestView

if TYPE_CHECKING:
    from extauthz.routing import Route
    from extauthz.snapshot import Snapshot

__all__ = ["allow", "identity_headers"]

# the pipeline's logger: an identity that cannot be sent is a check outcome
log = logging.getLogger("extauthz.check")


def allow(
    snapshot: Snapshot,
    route: Route | None,
    identity: Identity | None,
    view: RequestView,
    reserved: ReservedHeaders,
    *,
    shadow: AuthorizationError | None = None,
) -> Decision:
    """Allow (or, with ``shadow``, allow and record the policy denial that was waived).

    ``reserved``: the reserved header names of ``snapshot`` (built once per snapshot by the
    engine). Raises AuthorizationError (``identity_not_representable``) when an identity value
    cannot be a header, and BadRequestError when a credential cannot be cut out of the request.
    """
    route_name = route.name if route is not None else NO_ROUTE_LABEL
    upstream: list[tuple[str, str]] = []
    if identity is not None:
        upstream = identity_headers(snapshot.settings.identity_header_prefix, identity,
                                    route_name)
        tokens = snapshot.identity_tokens
        if tokens is not None and route is not None:
            # the signed identity token (docs/identity-token.md): base64url, header-safe
            minted = tokens.header_for(route.name, identity)
            if minted is not None:
                upstream.append(minted)
    upstream_names = {k for k, _ in upstream}
    client_names = canonical_names(view.headers)
    # Clients must never be able to send identity headers themselves, in any spelling an
    # upstream may read as the same name, on any route (public ones included). A client-sent
    # identity token is in the reserved set too: removed on every route, minted or not.
    remove = reserved.spoofed(client_names, upstream_names)
    remove_query: list[str] = []
    if route is not None and route.strip_credentials:
        _strip_credentials(route, view, client_names, upstream, upstream_names, remove,
                           remove_query)
    reason = Reason.OK if identity is not None else Reason.PUBLIC
    rule = ""
    waived: Mapping[str, str] | None = None
    if shadow is not None:
        reason, rule = shadow.reason, shadow.rule
        waived = {"reason": reason.value, "rule": rule}
    return Decision(
        outcome=Outcome.ALLOW if shadow is None else Outcome.SHADOW_DENY,
        http_status=200,
        grpc_code=GrpcCode.OK,
        reason=reason,
        route=route_name,
        identity=identity,
        upstream_headers=tuple(upstream),
        remove_headers=tuple(dict.fromkeys(remove)),
        remove_query=tuple(dict.fromkeys(remove_query)),
        dynamic_metadata=_metadata(route_name, identity, waived),
        rule=rule,
    )


def identity_headers(prefix: str, identity: Identity, route_name: str) -> list[tuple[str, str]]:
    """The headers that tell the upstream who called (``prefix`` + name, then the
    authenticator's own). Raises AuthorizationError when a value cannot be a header."""
    upstream = [(prefix + "subject", identity.subject),
                (prefix + "method", identity.method.value)]
    if len(identity.all_methods) > 1:
        upstream.append((prefix + "methods", ",".join(m.value for m in identity.all_methods)))
    if identity.consumer:
        upstream.append((prefix + "consumer", identity.consumer))
    if identity.scopes:
        upstream.append((prefix + "scopes", " ".join(sorted(identity.scopes))))
    upstream.extend(identity.headers)
    unsafe = [k for k, v in upstream if not identity_value_safe(v)]
    if unsafe:
        # Never allow without the identity (the upstream would see an authenticated request
        # with no subject), never send a value that splits or differs by transport. Raised,
        # not returned: the caller's `except CheckError` makes the 403, and nothing that
        # post-processes allowed decisions ever sees it.
        log.warning("route %s: identity header %s has a value that cannot be sent "
                    "(control character, surrounding space or invalid Unicode): denied",
                    route_name, unsafe[0])
        raise AuthorizationError(Reason.IDENTITY_NOT_REPRESENTABLE,
                                 "the identity cannot be passed to the upstream")
    return upstream


def _strip_credentials(
    route: Route,
    view: RequestView,
    client_names: Sequence[tuple[str, str]],
    upstream: list[tuple[str, str]],
    upstream_names: set[str],
    remove: list[str],
    remove_query: list[str],
) -> None:
    """Add to ``remove`` / ``remove_query`` / ``upstream`` what takes every credential of the
    route's methods out of the request (``strip_credentials``)."""
    for authenticator in route.authenticators:
        remove.extend(n for n in header_spellings(
            client_names, authenticator.credential_headers()) if n not in upstream_names)
        params = authenticator.credential_query_params()
        if params and query_hides(view.raw_query, params):
            raise BadRequestError(Reason.BAD_REQUEST, "a credential parameter after "
                                  "';' in the query cannot be removed")
        remove_query.extend(query_spellings(view.raw_query, params, view.query))
        cookies = authenticator.credential_cookies()
        raw_cookie = view.headers.value("cookie")
        if cookies and raw_cookie:
            _strip_cookies(raw_cookie, cookies, upstream, remove)


def _strip_cookies(raw_cookie: str, cookies: Iterable[str], upstream: list[tuple[str, str]],
                   remove: list[str]) -> None:
    """The ``Cookie`` header without the credential ``cookies``: removed when nothing else is
    left, else rewritten (sent as an upstream header)."""
    rewritten = without_cookies(raw_cookie, cookies)
    if rewritten == "":
        remove.append("cookie")
    elif rewritten is not None:
        if not identity_value_safe(rewritten):
            # bytes that are not UTF-8 cannot be sent back (gRPC strings, the HTTP
            # transport's UTF-8): refuse rather than forward the key
            raise BadRequestError(Reason.BAD_REQUEST, "the Cookie header cannot be rewritten "
                                  "without the credential")
        upstream.append(("cookie", rewritten))


def _metadata(route_name: str, identity: Identity | None,
              waived: Mapping[str, str] | None) -> Mapping[str, Any]:
    """The dynamic metadata of an allow: route, identity, and the waived shadow denial."""
    meta: dict[str, Any] = {"route": route_name}
    if identity is not None:
        meta["identity"] = {
            "subject": identity.subject,
            "method": identity.method.value,
            "methods": [m.value for m in identity.all_methods],
            "authenticator": identity.authenticator,
            "consumer": identity.consumer or "",
            "scopes": sorted(identity.scopes),
        }
    if waived is not None:
        meta["shadow_deny"] = waived
    return meta
