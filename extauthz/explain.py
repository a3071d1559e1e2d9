"""The explain trace of ``extauthz check --explain`` (and of failed ``extauthz test`` cases).

A :class:`Trace` is filled in by :meth:`extauthz.pipeline.Engine.check` only when one is passed;
a real Check never builds one, so the hot path pays one ``is not None`` test per stage.

What it records: how the route was selected (named by Envoy's ``context_extensions``, or the first
route whose hosts, path and methods match — with the reason every earlier route was passed over),
the path-template parameters, every authentication method with its result (``ok``, ``absent``, a
reason code, or ``not tried``), and every policy rule with its verdict (``pass``, ``fail`` with
reason and detail, or ``skipped`` after the first failure). Header and credential values never
appear in a trace; claim values and path parameters may (they are not secrets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extauthz.authz.rules import RuleResult

if TYPE_CHECKING:
    from extauthz.routing import Route, RouteMatch, RouteTable
    from extauthz.types import RequestView


@dataclass(slots=True)
class AuthnStep:
    """One authentication method as tried for the request."""

    authenticator: str
    kind: str
    #: ``ok``, ``absent`` (no credential of this kind), ``not tried``, or a reason code
    result: str
    subject: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"authenticator": self.authenticator, "kind": self.kind,
                               "result": self.result}
        if self.subject:
            out["subject"] = self.subject
        return out


@dataclass(slots=True)
class Trace:
    """Why a request got its decision."""

    route: str | None = None
    selection: str = ""
    passed_over: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    public: bool = False
    authn_mode: str = ""
    authn: list[AuthnStep] = field(default_factory=list)
    rules: list[RuleResult] = field(default_factory=list)
    shadow: bool = False
    notes: list[str] = field(default_factory=list)
    #: each rate limit that applied, with its windows' state (extauthz.ratelimit.limiter)
    rate_limits: list[dict[str, Any]] = field(default_factory=list)

    def select_route(self, table: RouteTable, route_key: str, view: RequestView,
                     match: RouteMatch | None) -> None:
        """Record how ``match`` was selected from ``table`` for ``view``."""
        named = view.context_extensions.get(route_key)
        if named is not None:
            self.selection = f"named by Envoy: context_extensions[{route_key!r}] = {named!r}"
            named_route = table.get(named)
            if match is None and named_route is None:
                self.selection += " (no route has that name: denied, fail closed)"
            elif match is None and named_route is not None:
                self.selection += f" ({why_not(named_route, view)}: the route does not apply)"
        else:
            for route in table.routes:
                if match is not None and route is match.route:
                    break
                self.passed_over.append((route.name, why_not(route, view)))
            if match is None:
                self.selection = "no route's hosts, path and methods match"
            else:
                self.selection = "the first route whose hosts, path and methods match"
        if match is not None:
            self.route = match.route.name
            self.params = dict(match.params)
            self.public = match.route.public
            self.authn_mode = "all_of" if match.route.require_all else "any_of"
            self.shadow = match.route.policy.shadow

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "selection": self.selection,
            "passed_over": [{"route": n, "why": w} for n, w in self.passed_over],
            "params": dict(self.params),
            "public": self.public,
            "authn_mode": self.authn_mode,
            "authn": [s.to_json() for s in self.authn],
            "rules": [r.to_json() for r in self.rules],
            "shadow": self.shadow,
            "notes": list(self.notes),
            "rate_limits": list(self.rate_limits),
        }

    def render(self) -> str:
        """A human-readable rendering (what ``check --explain`` prints to stderr)."""
        lines = [f"route: {self.route or '(none)'} — {self.selection}"]
        lines.extend(f"  passed over {name}: {why}" for name, why in self.passed_over)
        if self.params:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
            lines.append(f"  params: {shown}")
        if self.public:
            lines.append("authn: public route, no credential needed")
        elif self.authn:
            lines.append(f"authn ({self.authn_mode}):")
            for step in self.authn:
                who = f" (subject {step.subject!r})" if step.subject else ""
                lines.append(f"  {step.authenticator} [{step.kind}]: {step.result}{who}")
        if self.rules:
            lines.append("policy" + (" (SHADOW: denials are not enforced)" if self.shadow
                                     else "") + ":")
            for result in self.rules:
                _render_rule(result, 1, lines)
        elif self.route and not self.public and self.authn and any(
                s.result == "ok" for s in self.authn):
            lines.append("policy: no rules (any authenticated request is allowed)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _render_rule(result: RuleResult, depth: int, lines: list[str]) -> None:
    mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip"}.get(result.result, result.result)
    text = f"{'  ' * depth}{mark} {result.rule}: {result.summary}"
    if result.result == "fail":
        text += f" -> {result.reason}" + (f" ({result.detail})" if result.detail else "")
    lines.append(text)
    for child in result.children:
        _render_rule(child, depth + 1, lines)


def why_not(route: Route, view: RequestView) -> str:
    """Why ``route`` does not match ``view`` (its matchers are checked in this order)."""
    if route.methods and view.method not in route.methods:
        return f"method {view.method} not in [{', '.join(sorted(route.methods))}]"
    if not route.hosts.matches(view.host):
        return f"host {view.host!r} does not match"
    path = route.path
    if path.exact is not None:
        return f"path is not {path.exact!r}"
    if path.prefix is not None:
        return f"path does not start with {path.prefix!r}"
    if path.template is not None:
        return "path does not match the route's template"
    return "does not match"
