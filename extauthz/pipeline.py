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
from collections.abc import Mapping
from typing import Any

from extauthz import tracing
from extauthz.authn import dispatch
from extauthz.authn.base import Authenticator, CredentialSurface
from extauthz.config.schema import Limits
from extauthz.decision import Decision, GrpcCode, deny, from_error
from extauthz.errors import (
    AuthenticationError,
    AuthorizationError,
    BadRequestError,
    CheckError,
    DependencyUnavailable,
    Reason,
)
from extauthz.explain import AuthnStep, Trace
from extauthz.hygiene import ReservedHeaders
from extauthz.metrics import NO_ROUTE_LABEL, Metrics
from extauthz.paths import path_problem
from extauthz.request import signature_components
from extauthz.respond.allow import allow
from extauthz.respond.challenges import (
    forbidden_challenges,
    invalid_challenges,
    missing_challenges,
)
from extauthz.routing import Route, RouteMatch
from extauthz.snapshot import Snapshot
from extauthz.types import Identity, RequestView

log = logging.getLogger("extauthz.check")

_PARTIAL_BODY = "x-envoy-auth-partial-body"


class Engine:
    """Decides checks against the current snapshot."""

    def __init__(self, metrics: Metrics, snapshot: Snapshot | None = None) -> None:
        self.metrics = metrics
        self.snapshot = snapshot
        #: the reserved identity header names of one snapshot (built on first use after a swap)
        self._reserved_cache: tuple[Snapshot | None, ReservedHeaders | None] = (None, None)

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
        """Route, authenticate, then authorize (:meth:`_authorize`), in the check's one guard:
        whatever a stage raises becomes the deny of its error, under the route's name once one
        was selected (fail closed). One coroutine per stage that may wait, no more: this is the
        hot path."""
        snapshot = self.snapshot
        if snapshot is None:
            return deny(503, GrpcCode.UNAVAILABLE, Reason.DEPENDENCY_UNAVAILABLE, NO_ROUTE_LABEL,
                        "authorization service not ready", request_id=view.request_id)
        route: Route | None = None
        try:
            match = _select(snapshot, view, trace)
            if match is None:
                return self._unmatched(snapshot, view, trace)
            route = match.route
            if route.public:
                return await _limited(snapshot, allow(snapshot, route, None, view,
                                                      self._reserved(snapshot)),
                                      view, match.params, trace)
            _check_credential_size(route, view, snapshot.settings.limits, trace)
            if route.require_all:
                identity, missing = await self._authenticate_all(route, view, trace)
            else:
                identity = await self._authenticate(route, view, trace)
                missing = route.authenticators
            if identity is None:
                return deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL,
                            route.name, "credentials required",
                            challenges=missing_challenges(missing), request_id=view.request_id)
            return await self._authorize(snapshot, match, identity, view, trace)
        except AuthenticationError as exc:
            return from_error(exc, _label(route), request_id=view.request_id,
                              challenges=invalid_challenges(route, exc))
        except CheckError as exc:
            return from_error(exc, _label(route), request_id=view.request_id)
        except Exception:
            if route is None:
                log.exception("unexpected error while checking a request (denied)")
            else:
                log.exception("unexpected error on route %s (denied)", route.name)
            return from_error(RuntimeError(), _label(route), request_id=view.request_id)

    def _unmatched(self, snapshot: Snapshot, view: RequestView, trace: Trace | None) -> Decision:
        """No route matched: ``settings.unmatched`` decides (allow, or 403 ``no_route``)."""
        if trace is not None:
            trace.notes.append(f"settings.unmatched is {snapshot.settings.unmatched!r}")
        if snapshot.settings.unmatched == "allow":
            return allow(snapshot, None, None, view, self._reserved(snapshot))
        return deny(403, GrpcCode.PERMISSION_DENIED, Reason.NO_ROUTE, NO_ROUTE_LABEL,
                    "no route for this request", request_id=view.request_id)

    async def _authorize(
        self, snapshot: Snapshot, match: RouteMatch, identity: Identity, view: RequestView,
        trace: Trace | None,
    ) -> Decision:
        """The route's policy (external lookups and PDP calls first, docs/authzen.md), then the
        allow and its rate limits; shadow mode turns a policy denial into a logged allow."""
        route = match.route
        external = route.policy.external
        resolved = None if external is None else await external.resolve(
            view, identity, match.params, route.name, None if trace is None else trace.notes)
        try:
            route.policy.evaluate(view, identity, match.params,
                                  None if trace is None else trace.rules, resolved)
        except AuthorizationError as exc:
            if not route.policy.shadow:
                return _with_pdp(_forbidden(snapshot, route.name, identity, view, exc), resolved)
            waived = allow(snapshot, route, identity, view, self._reserved(snapshot), shadow=exc)
            return _with_pdp(await _limited(snapshot, waived, view, match.params, trace),
                             resolved)
        except DependencyUnavailable as exc:  # a PDP that could not answer (fail closed)
            return _with_pdp(from_error(exc, route.name, request_id=view.request_id), resolved)
        allowed = allow(snapshot, route, identity, view, self._reserved(snapshot))
        return _with_pdp(await _limited(snapshot, allowed, view, match.params, trace), resolved)

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
        counter = self.metrics.authentication_results
        try:
            identity = await authenticator.authenticate(view)
        except CheckError as exc:
            counter(authenticator.kind.value, exc.reason.value).inc()
            if isinstance(exc, AuthenticationError) and not exc.authenticator:
                exc.authenticator = authenticator.name
            if trace is not None:
                trace.authn.append(
                    AuthnStep(authenticator.name, authenticator.kind.value, exc.reason.value))
            raise
        if identity is not None:
            counter(authenticator.kind.value, "ok").inc()
        if trace is not None:
            trace.authn.append(AuthnStep(
                authenticator.name, authenticator.kind.value,
                "ok" if identity is not None else "absent",
                identity.subject if identity is not None else ""))
        return identity

    def _reserved(self, snapshot: Snapshot) -> ReservedHeaders:
        """:func:`reserved_headers` of ``snapshot``, built once per snapshot."""
        cached_for, reserved = self._reserved_cache
        if cached_for is snapshot and reserved is not None:
            return reserved
        reserved = reserved_headers(snapshot)
        self._reserved_cache = (snapshot, reserved)
        return reserved


def _select(snapshot: Snapshot, view: RequestView, trace: Trace | None) -> RouteMatch | None:
    """The request's route, after what needs none: the size limits and the path's shape (400)."""
    _check_size(view, snapshot.settings.limits, trace)
    paths = snapshot.settings.paths
    problem = path_problem(view.path, allow_semicolon=paths.allow_semicolon,
                           allow_encoded_percent=paths.allow_encoded_percent)
    if problem is not None:
        if trace is not None:
            trace.notes.append(f"the path is not normalized or is ambiguous ({problem}): "
                               "refused before routing (settings.paths, docs/paths.md)")
        raise BadRequestError(Reason.BAD_REQUEST, f"path is not normalized: {problem}")
    match = snapshot.routes.match(view)
    if trace is not None:
        trace.select_route(snapshot.routes, snapshot.settings.route_key, view, match)
    return match


def _label(route: Route | None) -> str:
    """The route label of a decision (metrics, logs)."""
    return route.name if route is not None else NO_ROUTE_LABEL


def _forbidden(snapshot: Snapshot, route_name: str, identity: Identity, view: RequestView,
               exc: AuthorizationError) -> Decision:
    """The 403 of a policy denial, naming the rule that denied (and a bearer scope challenge)."""
    rule = exc.rule
    denied = from_error(exc, route_name, request_id=view.request_id, identity=identity,
                        challenges=forbidden_challenges(snapshot, identity, exc))
    return dataclasses.replace(denied, rule=rule) if rule else denied


async def _limited(snapshot: Snapshot, decision: Decision, view: RequestView,
                   params: Mapping[str, str], trace: Trace | None) -> Decision:
    """The rate limits of ``snapshot`` (if any) on an allowed decision: it, or a 429/503."""
    if snapshot.rate_limits is None:
        return decision
    return await snapshot.rate_limits.apply(decision, view, params, trace)


def _with_pdp(decision: Decision, resolved: Any) -> Decision:
    """Attach the PDP answers of the external stage (decision log: ``pdp``)."""
    if resolved is None or not resolved.answers:
        return decision
    return dataclasses.replace(decision, pdp=resolved.log_records())


def reserved_headers(snapshot: Snapshot) -> ReservedHeaders:
    """The identity namespace, the identity header names of *every* authenticator in
    ``snapshot`` (reserved on every route, not only on the routes that use them) and
    ``x-envoy-auth-partial-body``."""
    names = [h for a in snapshot.authenticators.values() for h in a.surface.injected_headers]
    if snapshot.identity_tokens is not None:  # the signed identity token's header
        names.append(snapshot.identity_tokens.header)
    # Envoy overwrites this header in the CheckRequest but forwards the client's own copy
    # upstream, where it could mislead an application that reads it.
    names.append(_PARTIAL_BODY)
    return ReservedHeaders(snapshot.settings.identity_header_prefix, names)


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
    """``settings.limits`` on the credentials the route's methods read (401 when over), as each
    method's :class:`~extauthz.authn.base.CredentialSurface` declares them: its headers, query
    parameters and cookies bounded by ``max_token_bytes`` (unless ``token_size_limited`` is
    off, as for client certificates), the components a signature covers by
    ``max_signature_components`` (when ``signature_components_limited``).
    """
    for authenticator in route.authenticators:
        surface = authenticator.surface
        description = ""
        if surface.token_size_limited and _oversized(surface, view, limits.max_token_bytes):
            description = "credential too large"
        elif (surface.signature_components_limited
              and signature_components(view.headers) > limits.max_signature_components):
            description = "signature covers too many components"
        if description:
            if trace is not None:
                trace.notes.append(f"settings.limits: {description} ({authenticator.name})")
            raise AuthenticationError(Reason.CREDENTIAL_TOO_LARGE, description,
                                      authenticator=authenticator.name)


def _oversized(surface: CredentialSurface, view: RequestView, longest: int) -> bool:
    """Whether a credential value ``surface`` names is longer than ``longest``."""
    for header in surface.headers:
        value = view.headers.value(header)
        if value is not None and _credential_length(header, value) > longest:
            return True
    for param in surface.query_params:
        value = view.query.get(param)
        if value is not None and len(value) > longest:
            return True
    for name in surface.cookies:
        cookie = view.cookie(name)
        if cookie is not None and len(cookie) > longest:
            return True
    return False
