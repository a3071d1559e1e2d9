"""The route policy: every rule must pass; the first failure denies with 403.

Order is explicit: the shorthand keys of ``authz`` first, in this fixed order — ``scopes_all``,
``scopes_any``, ``consumers``, ``subjects`` — then the ``rules:`` list in list order. The rule
kinds and their reason codes are in :mod:`extauthz.authz.rules` and docs/policies.md.

Compiling (:meth:`Policy.from_spec`) checks what the schema cannot: consumer names must exist and
CEL expressions must compile and type-check. Every problem is collected with its path relative to
the route's ``authz`` (``rules[1].cel: 1:5: undeclared reference to 'foo'``) and raised together
as :class:`PolicyError`.

``shadow: true`` does not change evaluation: the pipeline reads :attr:`Policy.shadow` and turns a
denial into an allowed ``shadow_deny`` decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extauthz.authz.rules import (
    AllOf,
    AnyOf,
    Cel,
    ClaimMatch,
    Consumers,
    Context,
    Equal,
    HeaderMatch,
    MetadataMatch,
    Methods,
    Principal,
    QueryMatch,
    Roles,
    Rule,
    RuleDenied,
    RuleResult,
    ScopesAll,
    ScopesAny,
    Source,
    Subjects,
)
from extauthz.config.schema import AuthzSpec, RuleSpec
from extauthz.types import Identity, RequestView

if TYPE_CHECKING:
    from extauthz.external.stage import ExternalHub, RouteExternal

__all__ = ["Policy", "PolicyError", "RuleDenied", "RuleResult"]


class PolicyError(ValueError):
    """A policy that cannot be compiled; ``issues`` are (path relative to ``authz``, message)."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{p}: {m}" for p, m in issues))


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled route policy."""

    rules: tuple[Rule, ...] = ()
    shadow: bool = False
    route: str = ""
    #: the variables and members the policy's CEL expressions mention
    cel_names: frozenset[str] = frozenset()
    #: metadata lookups and AuthZEN rules, run before :meth:`evaluate` (docs/authzen.md)
    external: RouteExternal | None = None

    @classmethod
    def from_spec(
        cls,
        spec: AuthzSpec,
        *,
        route: str = "",
        consumers: Collection[str] | None = None,
        params: Collection[str] | None = None,
        external: ExternalHub | None = None,
    ) -> Policy:
        """Compile ``spec``.

        ``consumers``: the known consumer names; ``params``: the route's path-template
        parameters. Rules naming others are configuration errors (None: not checked).
        ``external``: the configured PDPs and lookups (``authzen`` rules and ``metadata``).
        """
        compiler = _Compiler(
            None if consumers is None else frozenset(consumers),
            None if params is None else frozenset(params),
            external,
        )
        compiler.lookups = frozenset(spec.metadata)
        rules: list[Rule] = []
        if spec.scopes_all:
            rules.append(ScopesAll("scopes_all", spec.scopes_all))
        if spec.scopes_any:
            rules.append(ScopesAny("scopes_any", spec.scopes_any))
        if spec.consumers is not None:
            compiler.known_consumers(spec.consumers, "consumers")
            rules.append(Consumers("consumers", spec.consumers, ()))
        if spec.subjects is not None:
            rules.append(Subjects("subjects", spec.subjects, (), prefixes=False))
        for i, rule in enumerate(spec.rules):
            built = compiler.rule(rule, f"rules[{i}]")
            if built is not None:
                rules.append(built)
        stage = compiler.external_stage(spec.metadata)
        if compiler.issues:
            raise PolicyError(compiler.issues)
        return cls(rules=tuple(rules), shadow=spec.shadow, route=route,
                   cel_names=compiler.cel_names, external=stage)

    @property
    def empty(self) -> bool:
        return not self.rules

    def evaluate(
        self,
        view: RequestView,
        identity: Identity,
        params: Mapping[str, str],
        trace: list[RuleResult] | None = None,
        external: Any = None,
    ) -> None:
        """Return if the request is allowed; raise RuleDenied (an AuthorizationError) if not.

        With ``trace``, every rule's verdict is appended to it (rules after the first failure
        as ``skipped``); the decision is the same. ``external``: what :attr:`external` resolved
        for this request (lookups, PDP answers).
        """
        if not self.rules:
            return
        ctx = Context(view, identity, params, self.route, self.cel_names, external)
        if trace is None:
            for rule in self.rules:
                denied = rule.check(ctx)
                if denied is not None:
                    raise denied
            return
        first: RuleDenied | None = None
        for rule in self.rules:
            if first is not None:
                trace.append(RuleResult(rule.label, rule.kind, rule.summary(), "skipped"))
                continue
            denied, result = rule.explain(ctx)
            trace.append(result)
            first = denied
        if first is not None:
            raise first


class _Compiler:
    def __init__(self, consumers: frozenset[str] | None, params: frozenset[str] | None,
                 external: ExternalHub | None = None) -> None:
        self.consumers = consumers
        self.params = params
        self.issues: list[tuple[str, str]] = []
        self.cel_names: frozenset[str] = frozenset()
        self.external = external
        self.checks: list[Any] = []
        #: the lookups the route runs (``authz.metadata``): what metadata rules may name
        self.lookups: frozenset[str] = frozenset()

    def known_lookup(self, path: str, at: str) -> bool:
        """A ``metadata`` path must start with a lookup of the route's ``authz.metadata``."""
        name = path.split(".", 1)[0]
        if name in self.lookups:
            return True
        listed = ", ".join(sorted(self.lookups)) or "none: set authz.metadata"
        self.issues.append((at, f"{name!r} is not a lookup of this route ({listed})"))
        return False

    def external_stage(self, metadata: list[str]) -> RouteExternal | None:
        """The route's lookups and AuthZEN rules (None when it has neither)."""
        if not metadata and not self.checks:
            return None
        from extauthz.external.stage import RouteExternal

        lookups = []
        known = self.external.lookups if self.external is not None else {}
        for i, name in enumerate(metadata):
            if name not in known:
                listed = ", ".join(sorted(known)) or "none in settings.lookups"
                self.issues.append((f"metadata[{i}]", f"unknown lookup {name!r} ({listed})"))
            else:
                lookups.append(known[name])
        names: set[str] = {"identity", "metadata"}
        for item in [*lookups, *self.checks]:
            names |= item.names
        return RouteExternal(tuple(lookups), tuple(self.checks), frozenset(names))

    def _authzen(self, spec: Any, path: str) -> Rule | None:
        from extauthz.external.authzen import AuthzenCheck
        from extauthz.external.mapping import TemplateError

        pdps = self.external.pdps if self.external is not None else {}
        pdp = pdps.get(spec.pdp)
        if pdp is None:
            listed = ", ".join(sorted(pdps)) or "none in settings.pdps"
            self.issues.append((f"{path}.authzen.pdp", f"unknown PDP {spec.pdp!r} ({listed})"))
            return None
        try:
            check = AuthzenCheck(path, spec, pdp)
        except TemplateError as exc:
            self.issues.append((f"{path}.authzen", str(exc)))
            return None
        self.checks.append(check)
        return check

    def known_consumers(self, names: Collection[str], path: str) -> None:
        if self.consumers is None:
            return
        for k, name in enumerate(names):
            if name not in self.consumers:
                self.issues.append((f"{path}[{k}]", f"unknown consumer {name!r}"))

    def rule(self, spec: RuleSpec, path: str) -> Rule | None:
        kind = spec.kind
        at = f"{path}.{kind}"
        if spec.scopes_all is not None:
            return ScopesAll(path, spec.scopes_all)
        if spec.scopes_any is not None:
            return ScopesAny(path, spec.scopes_any)
        if spec.roles is not None:
            roles = spec.roles
            require_all = roles.all_of is not None
            return Roles(path, roles.claim, roles.all_of or roles.any_of or [],
                         require_all=require_all)
        if spec.claim is not None:
            c = spec.claim
            return ClaimMatch(path, c.path, c.matcher, getattr(c, c.matcher))
        if spec.consumers is not None:
            self.known_consumers(spec.consumers.allow or [], f"{at}.allow")
            self.known_consumers(spec.consumers.deny, f"{at}.deny")
            return Consumers(path, spec.consumers.allow, spec.consumers.deny)
        if spec.subjects is not None:
            return Subjects(path, spec.subjects.allow, spec.subjects.deny, prefixes=True)
        if spec.principal is not None:
            return Principal(path, spec.principal.allow, spec.principal.deny)
        if spec.methods is not None:
            return Methods(path, spec.methods)
        if spec.source is not None:
            return Source(path, spec.source.allow, spec.source.deny)
        if spec.header is not None:
            h = spec.header
            return HeaderMatch(path, h.name, h.matcher, getattr(h, h.matcher))
        if spec.query is not None:
            q = spec.query
            return QueryMatch(path, q.name, q.matcher, getattr(q, q.matcher))
        if spec.equal is not None:
            operands = spec.equal.operands
            for side, name in operands:
                if side == "metadata" and not self.known_lookup(name, f"{at}.metadata"):
                    return None
                if side == "param" and self.params is not None and name not in self.params:
                    known = ", ".join(sorted(self.params)) or "none: the route has no template"
                    self.issues.append((f"{at}.param",
                                        f"unknown path parameter {name!r} (known: {known})"))
                    return None
            return Equal(path, operands)
        if spec.any_of is not None or spec.all_of is not None:
            members = spec.any_of if spec.any_of is not None else spec.all_of
            built = [self.rule(r, f"{at}[{j}]") for j, r in enumerate(members or [])]
            if any(b is None for b in built):
                return None
            children = [b for b in built if b is not None]
            return AnyOf(path, children) if spec.any_of is not None else AllOf(path, children)
        if spec.cel is not None:
            return self._cel(spec.cel, at)
        if spec.metadata is not None:
            m = spec.metadata
            if not self.known_lookup(m.path, f"{at}.path"):
                return None
            return MetadataMatch(path, m.path, m.matcher, getattr(m, m.matcher))
        if spec.authzen is not None:
            return self._authzen(spec.authzen, path)
        self.issues.append((path, f"unsupported rule kind {kind}"))
        return None

    def _cel(self, source: str, at: str) -> Rule | None:
        from extauthz.authz.cel import CelCompileError, compile_expression

        try:
            program = compile_expression(source)
        except CelCompileError as exc:
            self.issues.append((at, str(exc)))
            return None
        except ImportError:
            self.issues.append((at, "CEL rules need the cel-expr-python package"))
            return None
        self.cel_names |= program.names
        return Cel(at.rsplit(".", 1)[0], program)
