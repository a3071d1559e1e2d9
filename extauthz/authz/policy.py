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

The configured PDPs and metadata lookups (:mod:`extauthz.external`) build their rules on this
package's :class:`~extauthz.authz.rules.Rule`, so they sit above it: the compiler is handed them
as :class:`ExternalSources` and never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
from extauthz.config.external import AuthzenRule
from extauthz.config.schema import AuthzSpec, RuleSpec
from extauthz.types import Identity, RequestView

__all__ = [
    "ExternalSources",
    "ExternalStage",
    "Policy",
    "PolicyError",
    "RuleDenied",
    "RuleResult",
]


class ExternalStage(Protocol):
    """What a route runs before its rules, once per request: its metadata lookups and PDP calls
    (:class:`~extauthz.external.stage.RouteExternal`)."""

    async def resolve(self, view: RequestView, identity: Identity, params: Mapping[str, str],
                      route: str, notes: list[str] | None = None) -> Any:
        """What the rules read (``Context.external``): lookup values and PDP answers."""
        ...


class ExternalSources(Protocol):
    """The PDPs and lookups of one configuration, as the policy compiler sees them
    (:class:`~extauthz.external.stage.ExternalHub`)."""

    @property
    def pdps(self) -> Mapping[str, object]:
        """The PDPs by name (``settings.pdps``)."""
        ...

    @property
    def lookups(self) -> Mapping[str, object]:
        """The metadata lookups by name (``settings.lookups``)."""
        ...

    def authzen_rule(self, label: str, spec: AuthzenRule) -> Rule:
        """The rule asking the PDP ``spec.pdp`` (a name in :attr:`pdps`); a ``ValueError``
        says what is wrong with its templates."""
        ...

    def route_stage(self, lookups: Sequence[str], checks: Sequence[Rule]) -> ExternalStage:
        """The stage running ``lookups`` (names in :attr:`lookups`) and asking for ``checks``
        (rules made by :meth:`authzen_rule`)."""
        ...


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
    external: ExternalStage | None = None

    @classmethod
    def from_spec(
        cls,
        spec: AuthzSpec,
        *,
        route: str = "",
        consumers: Collection[str] | None = None,
        params: Collection[str] | None = None,
        external: ExternalSources | None = None,
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
    """Builds the rules of one policy, collecting located problems in :attr:`issues`."""

    def __init__(self, consumers: frozenset[str] | None, params: frozenset[str] | None,
                 external: ExternalSources | None = None) -> None:
        self.consumers = consumers
        self.params = params
        self.issues: list[tuple[str, str]] = []
        self.cel_names: frozenset[str] = frozenset()
        self.external = external
        #: the ``authzen`` rules made so far (nested ones too): the route stage asks for them
        self.checks: list[Rule] = []
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

    def external_stage(self, metadata: list[str]) -> ExternalStage | None:
        """The route's lookups and AuthZEN rules (None when it has neither)."""
        if not metadata and not self.checks:
            return None
        known = self.external.lookups if self.external is not None else {}
        for i, name in enumerate(metadata):
            if name not in known:
                listed = ", ".join(sorted(known)) or "none in settings.lookups"
                self.issues.append((f"metadata[{i}]", f"unknown lookup {name!r} ({listed})"))
        if self.issues or self.external is None:
            return None  # the policy is not built: nothing runs it
        return self.external.route_stage(metadata, self.checks)

    def known_consumers(self, names: Collection[str], path: str) -> None:
        if self.consumers is None:
            return
        for k, name in enumerate(names):
            if name not in self.consumers:
                self.issues.append((f"{path}[{k}]", f"unknown consumer {name!r}"))

    def rule(self, spec: RuleSpec, path: str) -> Rule | None:
        """The rule ``spec`` at ``path`` (``rules[1]``); None after recording a problem."""
        kind = spec.kind
        build = _BUILDERS.get(kind)
        if build is None:
            self.issues.append((path, f"unsupported rule kind {kind}"))
            return None
        return build(self, getattr(spec, kind), path, f"{path}.{kind}")

    # One builder per rule kind: (compiler, the kind's spec, the rule's path, path.kind).

    def _roles(self, roles: Any, path: str, at: str) -> Rule:
        return Roles(path, roles.claim, roles.all_of or roles.any_of or [],
                     require_all=roles.all_of is not None)

    def _consumers(self, spec: Any, path: str, at: str) -> Rule:
        self.known_consumers(spec.allow or [], f"{at}.allow")
        self.known_consumers(spec.deny, f"{at}.deny")
        return Consumers(path, spec.allow, spec.deny)

    def _equal(self, spec: Any, path: str, at: str) -> Rule | None:
        operands = spec.operands
        for side, name in operands:
            if side == "metadata" and not self.known_lookup(name, f"{at}.metadata"):
                return None
            if side == "param" and self.params is not None and name not in self.params:
                known = ", ".join(sorted(self.params)) or "none: the route has no template"
                self.issues.append((f"{at}.param",
                                    f"unknown path parameter {name!r} (known: {known})"))
                return None
        return Equal(path, operands)

    def _group(self, members: list[RuleSpec], path: str, at: str) -> list[Rule] | None:
        """The members of ``any_of`` / ``all_of``; None when one of them is wrong."""
        built = [self.rule(r, f"{at}[{j}]") for j, r in enumerate(members)]
        children = [b for b in built if b is not None]
        return children if len(children) == len(built) else None

    def _any_of(self, members: list[RuleSpec], path: str, at: str) -> Rule | None:
        children = self._group(members, path, at)
        return None if children is None else AnyOf(path, children)

    def _all_of(self, members: list[RuleSpec], path: str, at: str) -> Rule | None:
        children = self._group(members, path, at)
        return None if children is None else AllOf(path, children)

    def _metadata(self, m: Any, path: str, at: str) -> Rule | None:
        if not self.known_lookup(m.path, f"{at}.path"):
            return None
        return MetadataMatch(path, m.path, m.matcher, getattr(m, m.matcher))

    def _authzen(self, spec: AuthzenRule, path: str, at: str) -> Rule | None:
        pdps = self.external.pdps if self.external is not None else {}
        if self.external is None or spec.pdp not in pdps:
            listed = ", ".join(sorted(pdps)) or "none in settings.pdps"
            self.issues.append((f"{path}.authzen.pdp", f"unknown PDP {spec.pdp!r} ({listed})"))
            return None
        try:
            check = self.external.authzen_rule(path, spec)
        except ValueError as exc:  # a template that does not compile
            self.issues.append((f"{path}.authzen", str(exc)))
            return None
        self.checks.append(check)
        return check

    def _cel(self, source: str, path: str, at: str) -> Rule | None:
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
        return Cel(path, program)


#: the builder of every rule kind (the keys of :class:`~extauthz.config.schema.RuleSpec`)
_BUILDERS: dict[str, Callable[[_Compiler, Any, str, str], Rule | None]] = {
    "scopes_all": lambda c, v, path, at: ScopesAll(path, v),
    "scopes_any": lambda c, v, path, at: ScopesAny(path, v),
    "roles": _Compiler._roles,
    "claim": lambda c, v, path, at: ClaimMatch(path, v.path, v.matcher, getattr(v, v.matcher)),
    "consumers": _Compiler._consumers,
    "subjects": lambda c, v, path, at: Subjects(path, v.allow, v.deny, prefixes=True),
    "principal": lambda c, v, path, at: Principal(path, v.allow, v.deny),
    "methods": lambda c, v, path, at: Methods(path, v),
    "source": lambda c, v, path, at: Source(path, v.allow, v.deny),
    "header": lambda c, v, path, at: HeaderMatch(path, v.name, v.matcher, getattr(v, v.matcher)),
    "query": lambda c, v, path, at: QueryMatch(path, v.name, v.matcher, getattr(v, v.matcher)),
    "equal": _Compiler._equal,
    "any_of": _Compiler._any_of,
    "all_of": _Compiler._all_of,
    "cel": _Compiler._cel,
    "metadata": _Compiler._metadata,
    "authzen": _Compiler._authzen,
}
