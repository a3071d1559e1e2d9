"""The check pipeline: RequestView -> route -> authenticate -> authorize -> rate limits -> Decision.

:class:`Engine` holds a reference to the current :class:`Snapshot`; a check reads it once, so a
reload (which swaps the reference) never mixes two configurations within one request.
``Engine.check`` never raises: every failure becomes a deny decision (fail closed).

Shadow mode (``authz.shadow: true``): the route's policy is evaluated as usual, but a policy
denial becomes an *allowed* decision with outcome ``shadow_deny`` and the reason (and rule) that
would have applied, so it is counted and logged while nothing is enforced. Shadow mode covers the
policy only: a missing or invalid credential is denied even on a shadowed route — an unverified
caller is never let through, and there is no identity whose policy could be evaluated.

``check(view, trace)``: with a :class:`~extauthz.explain.Trace`, every stage records what it did
(``extauthz check --explain``); without one nothing extra is built.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

from extauthz import tracing
from extauthz.authn import dispatch
from extauthz.authn.base import Authenticator
from extauthz.config.compile import Snapshot
from extauthz.config.schema import Limits
from extauthz.decision import Decision, GrpcCode, Outcome, deny, from_error
from extauthz.errors import (
    AuthenticationError,
    AuthorizationError,
    BadRequestError,
    CheckError,
    Reason,
)
from extauthz.explain import AuthnStep, Trace
from extauthz.metrics import NO_ROUTE_LABEL, Metrics
from extauthz.request import path_is_normalized, signature_components
from extauthz.routing import Route
from extauthz.types import AuthMethod, Identity, RequestView

log = logging.getLogger("extauthz.check")

#: control characters (CR, LF, NUL, TAB, DEL, ...): a regex, not a per-character loop in Python,
#: since every identity header of every allowed check goes through it
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PARTIAL_BODY = "x-envoy-auth-partial-body"


def _header_safe(value: str) -> bool:
    """False for values Envoy would refuse or that could split a header (CR, LF, NUL, ...)."""
    return _CONTROL.search(value) is None


class Engine:
    """Decides checks against the current snapshot."""

    def __init__(self, metrics: Metrics, snapshot: Snapshot | None = None) -> None:
        self.metrics = metrics
        self.snapshot = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot | None:
        """Install ``snapshot`` atomically; returns the previous one (for the caller to close).

        Shadowed routes are announced loudly: one warning per route, and the
        ``extauthz_shadow_routes`` gauge.
        """
        previous, self.snapshot = self.snapshot, snapshot
        shadowed = [r.name for r in snapshot.routes.routes if r.policy.shadow]
        for name in shadowed:
            log.warning("route %s is in SHADOW mode: policy denials are logged and counted as "
                        "shadow_deny, and the request is ALLOWED", name)
        self.metrics.shadow_routes.set(len(shadowed))
        return previous

    async def check(self, view: RequestView, trace: Trace | None = None) -> Decision:
        """Decide one request. Never raises. ``trace``: record why (see the module doc)."""
        tracer = tracing.state.tracer
        if tracer is not None:  # OpenTelemetry: a span per check (extauthz.tracing)
            return await tracer.check(view, self._decide(view, trace))
        return await self._decide(view, trace)

    async def _decide(self, view: RequestView, trace: Trace | None) -> Decision:
        snapshot = self.snapshot
        if snapshot is None:
            return deny(503, GrpcCode.UNAVAILABLE, Reason.DEPENDENCY_UNAVAILABLE, NO_ROUTE_LABEL,
                        "authorization service not ready", request_id=view.request_id)
        try:
            return await self._check(snapshot, view, trace)
        except CheckError as exc:
            return from_error(exc, NO_ROUTE_LABEL, request_id=view.request_id)
        except Exception:
            log.exception("unexpected error while checking a request (denied)")
            return from_error(RuntimeError(), NO_ROUTE_LABEL, request_id=view.request_id)

    async def _check(
        self, snapshot: Snapshot, view: RequestView, trace: Trace | None
    ) -> Decision:
        limits = snapshot.settings.limits
        _check_size(view, limits, trace)
        if not path_is_normalized(view.path):
            if trace is not None:
                trace.notes.append("the path is not normalized (dot-segments, '//', or an "
                                   "encoded '/', '\\' or '.'): refused before routing")
            raise BadRequestError(Reason.BAD_REQUEST, "path is not normalized")
        match = snapshot.routes.match(view)
        if trace is not None:
            trace.select_route(snapshot.routes, snapshot.settings.route_key, view, match)
        if match is None:
            if trace is not None:
                trace.notes.append(f"settings.unmatched is {snapshot.settings.unmatched!r}")
            if snapshot.settings.unmatched == "allow":
                return self._allow(snapshot, None, None, view)
            return deny(403, GrpcCode.PERMISSION_DENIED, Reason.NO_ROUTE, NO_ROUTE_LABEL,
                        "no route for this request", request_id=view.request_id)
        route = match.route
        try:
            if route.public:
                return await _limited(snapshot, self._allow(snapshot, route, None, view), view,
                                      match.params, trace)
            _check_credential_size(route, view, limits, trace)
            if route.require_all:
                identity, missing = await self._authenticate_all(route, view, trace)
            else:
                identity = await self._authenticate(route, view, trace)
                missing = route.authenticators if identity is None else ()
            if identity is None:
                return deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL,
                            route.name, "credentials required",
                            # identical challenges (e.g. JWT + introspection) are sent once
                            challenges=list(dict.fromkeys(a.challenge() for a in missing)),
                            request_id=view.request_id)
            try:
                route.policy.evaluate(view, identity, match.params,
                                      None if trace is None else trace.rules)
            except AuthorizationError as exc:
                rule = getattr(exc, "rule", "")
                if route.policy.shadow:
                    return await _limited(
                        snapshot, self._allow(snapshot, route, identity, view, shadow=exc),
                        view, match.params, trace)
                denied = from_error(exc, route.name, request_id=view.request_id,
                                    identity=identity,
                                    challenges=_forbidden_challenges(snapshot, identity, exc))
                return dataclasses.replace(denied, rule=rule) if rule else denied
            return await _limited(snapshot, self._allow(snapshot, route, identity, view), view,
                                  match.params, trace)
        except AuthenticationError as exc:
            return from_error(exc, route.name, request_id=view.request_id,
                              challenges=_invalid_challenges(route, exc))
        except CheckError as exc:
            return from_error(exc, route.name, request_id=view.request_id)
        except Exception:
            log.exception("unexpected error on route %s (denied)", route.name)
            return from_error(RuntimeError(), route.name, request_id=view.request_id)

    async def _authenticate(
        self, route: Route, view: RequestView, trace: Trace | None
    ) -> Identity | None:
        """Any-of: the first method whose credential is present decides (valid or not)."""
        candidates = route.authenticators
        if route.bearer_dispatch:
            candidates = tuple(dispatch.select(candidates, view))
        for index, authenticator in enumerate(candidates):
            identity = await self._run(authenticator, view, trace)
            if identity is not None:
                if trace is not None:
                    trace.authn.extend(AuthnStep(a.name, a.kind.value, "not tried")
                                       for a in candidates[index + 1:])
                return identity
        return None

    async def _authenticate_all(
        self, route: Route, view: RequestView, trace: Trace | None
    ) -> tuple[Identity | None, tuple[Authenticator, ...]]:
        """All-of: every method must succeed. Returns (merged identity, methods lacking one).

        The first method's identity is primary (subject); the consumer is the first one any
        method names; scopes are the union of what every method granted; ``methods`` lists them
        all. An invalid credential raises at once.
        """
        identities: list[Identity] = []
        missing: list[Authenticator] = []
        for authenticator in route.authenticators:
            identity = await self._run(authenticator, view, trace)
            if identity is None:
                missing.append(authenticator)
            else:
                identities.append(identity)
        if missing:
            return None, tuple(missing)
        primary = identities[0]
        scopes = frozenset().union(*(i.scopes for i in identities))
        headers = tuple(h for i in identities for h in i.headers)
        expiries = [i.expires_at for i in identities if i.expires_at is not None]
        # The consumer is whichever method names one (e.g. the API key in mTLS + key).
        consumer = next((i.consumer for i in identities if i.consumer), primary.consumer)
        merged = dataclasses.replace(
            primary,
            consumer=consumer,
            scopes=scopes,
            headers=headers,
            methods=tuple(i.method for i in identities),
            expires_at=min(expiries) if expiries else None,
        )
        return merged, ()

    async def _run(
        self, authenticator: Authenticator, view: RequestView, trace: Trace | None = None
    ) -> Identity | None:
        """Run one authenticator, counting the result (ok or reason) by method."""
        counter = self.metrics.authentications
        try:
            identity = await authenticator.authenticate(view)
        except CheckError as exc:
            counter.labels(authenticator.kind.value, exc.reason.value).inc()
            if isinstance(exc, AuthenticationError) and not exc.authenticator:
                exc.authenticator = authenticator.name
            if trace is not None:
                trace.authn.append(
                    AuthnStep(authenticator.name, authenticator.kind.value, exc.reason.value))
            raise
        if identity is not None:
            counter.labels(authenticator.kind.value, "ok").inc()
        if trace is not None:
            trace.authn.append(AuthnStep(
                authenticator.name, authenticator.kind.value,
                "ok" if identity is not None else "absent",
                identity.subject if identity is not None else ""))
        return identity

    def _allow(
        self,
        snapshot: Snapshot,
        route: Route | None,
        identity: Identity | None,
        view: RequestView,
        *,
        shadow: AuthorizationError | None = None,
    ) -> Decision:
        """Allow (or, with ``shadow``, allow and record the policy denial that was waived)."""
        settings = snapshot.settings
        prefix = settings.identity_header_prefix
        upstream: list[tuple[str, str]] = []
        if identity is not None:
            upstream.append((prefix + "subject", identity.subject))
            upstream.append((prefix + "method", identity.method.value))
            if len(identity.all_methods) > 1:
                upstream.append(
                    (prefix + "methods", ",".join(m.value for m in identity.all_methods)))
            if identity.consumer:
                upstream.append((prefix + "consumer", identity.consumer))
            if identity.scopes:
                upstream.append((prefix + "scopes", " ".join(sorted(identity.scopes))))
            upstream.extend(identity.headers)
            upstream = [(k, v) for k, v in upstream if _header_safe(v)]
        tokens = snapshot.identity_tokens
        if tokens is not None and identity is not None and route is not None:
            # the signed identity token (docs/identity-token.md): base64url, header-safe
            minted = tokens.header_for(route.name, identity)
            if minted is not None:
                upstream.append(minted)
        upstream_names = {k for k, _ in upstream}
        remove: list[str] = []
        remove_query: list[str] = []
        # A client-sent identity token is removed on every route, minted or not.
        if tokens is not None and tokens.header in view.headers \
                and tokens.header not in upstream_names:
            remove.append(tokens.header)
        # Clients must never be able to send identity headers themselves.
        for name in view.headers:
            if name.startswith(prefix) and name not in upstream_names:
                remove.append(name)
        # Envoy overwrites this header in the CheckRequest but forwards the client's own copy
        # upstream, where it could mislead an application that reads it.
        if _PARTIAL_BODY in view.headers:
            remove.append(_PARTIAL_BODY)
        if route is not None:
            for authenticator in route.authenticators:
                # Headers an authenticator may inject (claims) are reserved too, even when unset.
                for header in _claim_headers(authenticator):
                    if header in view.headers and header not in upstream_names:
                        remove.append(header)
                if route.strip_credentials:
                    for header in authenticator.credential_headers():
                        if header in view.headers and header not in upstream_names:
                            remove.append(header)
                    for param in authenticator.credential_query_params():
                        if param in view.query:
                            remove_query.append(param)
                    cookies = authenticator.credential_cookies()
                    if cookies and "cookie" in view.headers:
                        upstream.extend(_without_cookies(view.headers["cookie"], cookies, remove))
        reason = Reason.OK if identity is not None else Reason.PUBLIC
        metadata = _metadata(route, identity)
        rule = ""
        if shadow is not None:
            reason, rule = shadow.reason, getattr(shadow, "rule", "")
            metadata = {**metadata, "shadow_deny": {"reason": reason.value, "rule": rule}}
        return Decision(
            outcome=Outcome.ALLOW if shadow is None else Outcome.SHADOW_DENY,
            http_status=200,
            grpc_code=GrpcCode.OK,
            reason=reason,
            route=route.name if route is not None else NO_ROUTE_LABEL,
            identity=identity,
            upstream_headers=tuple(upstream),
            remove_headers=tuple(dict.fromkeys(remove)),
            remove_query=tuple(remove_query),
            dynamic_metadata=metadata,
            rule=rule,
        )


async def _limited(snapshot: Snapshot, decision: Decision, view: RequestView,
                   params: Mapping[str, str], trace: Trace | None) -> Decision:
    """The rate limits of ``snapshot`` (if any) on an allowed decision: it, or a 429/503."""
    if snapshot.rate_limits is None:
        return decision
    return await snapshot.rate_limits.apply(decision, view, params, trace)


def _check_size(view: RequestView, limits: Limits, trace: Trace | None) -> None:
    """``settings.limits`` on the whole request: a few length reads, no parsing (400)."""
    if len(view.headers) > limits.max_headers:
        error = BadRequestError(Reason.TOO_MANY_HEADERS, "too many request headers")
    elif view.header_bytes > limits.max_header_bytes:
        error = BadRequestError(Reason.REQUEST_TOO_LARGE, "request headers too large")
    elif len(view.body) > limits.max_body_bytes:
        error = BadRequestError(Reason.BODY_TOO_LARGE, "request body too large")
    else:
        return
    if trace is not None:
        trace.notes.append(f"settings.limits: {error.description}: refused before routing")
    raise error


def _credential_length(header: str, value: str) -> int:
    if header == "authorization":  # the credential after the scheme (whatever the scheme)
        return len(value) - value.find(" ") - 1
    return len(value)


def _check_credential_size(
    route: Route, view: RequestView, limits: Limits, trace: Trace | None
) -> None:
    """``settings.limits`` on the credentials the route's methods read (401 when over).

    Client certificates (peer certificate, XFCC) are bounded by mTLS itself and the header
    limits, not by ``max_token_bytes``: a chain is legitimately larger than any token.
    """
    longest = limits.max_token_bytes
    for authenticator in route.authenticators:
        kind = authenticator.kind
        if kind is AuthMethod.MTLS:
            continue
        description = ""
        for header in authenticator.credential_headers():
            value = view.headers.value(header)
            if value is not None and _credential_length(header, value) > longest:
                description = "credential too large"
        for param in authenticator.credential_query_params():
            value = view.query.get(param)
            if value is not None and len(value) > longest:
                description = "credential too large"
        for name in authenticator.credential_cookies():
            cookie = view.cookie(name)
            if cookie is not None and len(cookie) > longest:
                description = "credential too large"
        if (not description and kind is AuthMethod.HMAC
                and signature_components(view.headers) > limits.max_signature_components):
            description = "signature covers too many components"
        if description:
            if trace is not None:
                trace.notes.append(f"settings.limits: {description} ({authenticator.name})")
            raise AuthenticationError(Reason.CREDENTIAL_TOO_LARGE, description,
                                      authenticator=authenticator.name)


def _claim_headers(authenticator: Authenticator) -> tuple[str, ...]:
    """Headers an authenticator may inject outside the identity namespace (optional member)."""
    return tuple(getattr(authenticator, "injected_headers", ()))


def _without_cookies(
    raw: str, names: tuple[str, ...], remove: list[str]
) -> list[tuple[str, str]]:
    """Rewrite the Cookie header without the credential cookies (or remove it if none remain)."""
    kept = [p.strip() for p in raw.split(";")
            if p.strip() and p.strip().partition("=")[0] not in names]
    if len(kept) == len([p for p in raw.split(";") if p.strip()]):
        return []
    if not kept:
        remove.append("cookie")
        return []
    return [("cookie", "; ".join(kept))]


def _metadata(route: Route | None, identity: Identity | None) -> Mapping[str, Any]:
    meta: dict[str, Any] = {"route": route.name if route is not None else NO_ROUTE_LABEL}
    if identity is not None:
        meta["identity"] = {
            "subject": identity.subject,
            "method": identity.method.value,
            "methods": [m.value for m in identity.all_methods],
            "authenticator": identity.authenticator,
            "consumer": identity.consumer or "",
            "scopes": sorted(identity.scopes),
        }
    return meta


def _invalid_challenges(route: Route, error: AuthenticationError) -> list[str]:
    """On an invalid credential: the failing method's challenge with the error, others plain."""
    out = []
    for authenticator in route.authenticators:
        if authenticator.name == error.authenticator:
            out.append(authenticator.challenge(error))
        else:
            out.append(authenticator.challenge())
    return out


def _forbidden_challenges(
    snapshot: Snapshot, identity: Identity, error: AuthorizationError
) -> list[str]:
    """RFC 6750 §3.1: a bearer token lacking scope gets ``error="insufficient_scope"``."""
    if identity.method not in (AuthMethod.JWT, AuthMethod.INTROSPECTION):
        return []
    if error.reason is not Reason.INSUFFICIENT_SCOPE:
        return []
    realm = snapshot.settings.realm.replace("\\", "\\\\").replace('"', '\\"')
    scope = error.scope.replace('"', "")
    return [f'Bearer realm="{realm}", error="insufficient_scope", scope="{scope}"']
