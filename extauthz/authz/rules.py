"""Compiled authorization rules.

Every rule has a ``label`` (its configuration path, e.g. ``rules[2].any_of[0]``: bounded, safe to
log) and ``check(ctx)``, which returns None when the rule passes or a :class:`RuleDenied` saying
why not. Rules never raise for a request they cannot satisfy: a missing claim, header, parameter
or address simply fails the rule (fail closed), and a CEL evaluation error becomes a
``policy_error`` denial.

Reason codes: scope rules deny with ``insufficient_scope`` (and the scopes for the RFC 6750
challenge), consumer rules with ``consumer_not_allowed``, CEL evaluation errors with
``policy_error``, every other rule with ``forbidden``. ``any_of`` fails with the failure of its
first alternative; ``all_of`` with its first failing member.

``explain(ctx)`` returns the same verdict as ``check`` plus a :class:`RuleResult` for the trace of
``extauthz check --explain``; it is only called when a trace was asked for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extauthz.authz.cel import ALL_NAMES, CelEvalError, CelProgram, activation
from extauthz.errors import AuthorizationError, Reason
from extauthz.types import Identity, RequestView

#: values longer than this never match a ``regex`` (bounds the work of a backtracking pattern)
MAX_REGEX_INPUT = 8192
_SHOWN = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleDenied(AuthorizationError):
    """A rule failed. ``rule`` is the label of the top-level rule (its configuration path)."""

    def __init__(
        self,
        reason: Reason,
        description: str,
        detail: str = "",
        *,
        scope: str = "",
        rule: str = "",
    ) -> None:
        super().__init__(reason, description, detail, scope=scope)
        self.rule = rule


@dataclass(slots=True)
class Context:
    """What one evaluation looks at; the CEL activation is built at most once, on first use."""

    view: RequestView
    identity: Identity
    params: Mapping[str, str]
    route: str
    #: what the policy's CEL expressions mention (the activation holds only that)
    cel_names: frozenset[str] = ALL_NAMES
    #: metadata lookups and PDP answers (:class:`extauthz.external.stage.Resolved`), if any
    external: Any = None
    _activation: Any = None

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The route's metadata lookup results by lookup name (empty without lookups)."""
        return self.external.metadata if self.external is not None else {}

    def cel_activation(self) -> Any:
        if self._activation is None:
            self._activation = activation(self.view, self.identity, self.route, self.params,
                                          self.cel_names, self.metadata)
        return self._activation


@dataclass(slots=True)
class RuleResult:
    """One rule's verdict in an explain trace."""

    rule: str
    kind: str
    summary: str
    result: str  # "pass", "fail" or "skipped"
    reason: str = ""
    detail: str = ""
    children: list[RuleResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "kind": self.kind, "summary": self.summary,
                               "result": self.result}
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out


def shown(value: Any) -> str:
    """A value for a trace line: JSON-ish, truncated."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:_SHOWN] + "…") if len(text) > _SHOWN else repr(text)


class Rule:
    """Base class of compiled rules."""

    __slots__ = ("label",)
    kind = "rule"

    def __init__(self, label: str) -> None:
        self.label = label

    def check(self, ctx: Context) -> RuleDenied | None:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def explain(self, ctx: Context) -> tuple[RuleDenied | None, RuleResult]:
        denied = self.check(ctx)
        return denied, self._result(denied)

    def _result(self, denied: RuleDenied | None, children: list[RuleResult] | None = None
                ) -> RuleResult:
        if denied is None:
            return RuleResult(self.label, self.kind, self.summary(), "pass",
                              children=children or [])
        return RuleResult(self.label, self.kind, self.summary(), "fail", denied.reason.value,
                          denied.detail, children or [])

    def _forbidden(self, detail: str) -> RuleDenied:
        return RuleDenied(Reason.FORBIDDEN, "forbidden", detail, rule=self.label)


# ------------------------------------------------------------------------------- value lookups


def claim_getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    """A getter for a dotted claim path; a top-level claim named exactly ``path`` wins."""
    parts = tuple(path.split("."))

    def get(claims: Mapping[str, Any]) -> Any:
        if path in claims:
            return claims[path]
        if len(parts) == 1:
            return None
        node: Any = claims
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    return get


def json_equal(a: Any, b: Any) -> bool:
    """Scalar equality without Python's ``True == 1``: bools only equal bools."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


#: a compiled matcher: value (None = absent) -> matches?
Matcher = Callable[[Any], bool]


def build_matcher(kind: str, expected: Any, *, header: bool = False) -> tuple[Matcher, str]:
    """Compile one ValueMatch into a function and its summary.

    ``header``: the value is a header (comma-joined when repeated) or query string — expected
    scalars compare as strings and ``contains`` looks for one comma-separated element.
    """
    build = _MATCHERS.get(kind)
    if build is None:
        raise ValueError(f"unknown matcher {kind!r}")
    if header and kind in ("equals", "contains"):
        expected = _as_text(expected)
    if header and kind == "one_of":
        expected = [_as_text(e) for e in expected]
    return build(expected, header)


# One builder per matcher kind: (expected value, header?) -> (matcher, summary).

def _exists(expected: Any, header: bool) -> tuple[Matcher, str]:
    return (lambda v: v is not None), "exists"


def _absent(expected: Any, header: bool) -> tuple[Matcher, str]:
    return (lambda v: v is None), "absent"


def _equals(expected: Any, header: bool) -> tuple[Matcher, str]:
    return (lambda v: _is_scalar(v) and json_equal(v, expected)), f"equals {shown(expected)}"


def _one_of(expected: Any, header: bool) -> tuple[Matcher, str]:
    options = tuple(expected)
    return ((lambda v: _is_scalar(v) and any(json_equal(v, o) for o in options)),
            f"one of [{', '.join(shown(o) for o in options)}]")


def _contains(expected: Any, header: bool) -> tuple[Matcher, str]:
    if header:  # one element of a comma-separated header or query value
        return ((lambda v: isinstance(v, str)
                 and any(p.strip() == expected for p in v.split(","))),
                f"contains {shown(expected)}")
    return ((lambda v: any(json_equal(e, expected) for e in _elements(v))),
            f"contains {shown(expected)}")


def _regex(expected: Any, header: bool) -> tuple[Matcher, str]:
    pattern = re.compile(expected)
    return ((lambda v: isinstance(v, str) and len(v) <= MAX_REGEX_INPUT
             and pattern.fullmatch(v) is not None),
            f"matches /{expected}/")


_MATCHERS: dict[str, Callable[[Any, bool], tuple[Matcher, str]]] = {
    "exists": _exists,
    "absent": _absent,
    "equals": _equals,
    "one_of": _one_of,
    "contains": _contains,
    "regex": _regex,
}


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _elements(value: Any) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    return (value,)


# ---------------------------------------------------------------------------------- the rules


class ScopesAll(Rule):
    __slots__ = ("needed", "scopes")
    kind = "scopes_all"

    def __init__(self, label: str, scopes: Sequence[str]) -> None:
        super().__init__(label)
        self.scopes = frozenset(scopes)
        self.needed = " ".join(sorted(self.scopes))

    def check(self, ctx: Context) -> RuleDenied | None:
        if self.scopes <= ctx.identity.scopes:
            return None
        missing = " ".join(sorted(self.scopes - ctx.identity.scopes))
        return RuleDenied(Reason.INSUFFICIENT_SCOPE, "insufficient scope",
                          f"missing scope(s): {missing}", scope=self.needed, rule=self.label)

    def summary(self) -> str:
        return f"scopes all of: {self.needed}"


class ScopesAny(Rule):
    __slots__ = ("needed", "scopes")
    kind = "scopes_any"

    def __init__(self, label: str, scopes: Sequence[str]) -> None:
        super().__init__(label)
        self.scopes = frozenset(scopes)
        self.needed = " ".join(sorted(self.scopes))

    def check(self, ctx: Context) -> RuleDenied | None:
        if not self.scopes.isdisjoint(ctx.identity.scopes):
            return None
        return RuleDenied(Reason.INSUFFICIENT_SCOPE, "insufficient scope",
                          f"none of the scopes: {self.needed}", scope=self.needed,
                          rule=self.label)

    def summary(self) -> str:
        return f"scopes any of: {self.needed}"


class Roles(Rule):
    __slots__ = ("claim", "get", "require_all", "roles")
    kind = "roles"

    def __init__(self, label: str, claim: str, roles: Sequence[str], *, require_all: bool
                 ) -> None:
        super().__init__(label)
        self.claim = claim
        self.get = claim_getter(claim)
        self.roles = frozenset(roles)
        self.require_all = require_all

    def check(self, ctx: Context) -> RuleDenied | None:
        held = {r for r in _elements(self.get(ctx.identity.claims)) if isinstance(r, str)}
        ok = self.roles <= held if self.require_all else not self.roles.isdisjoint(held)
        if ok:
            return None
        return self._forbidden(f"claim {self.claim} holds {sorted(held)!r}")

    def summary(self) -> str:
        which = "all of" if self.require_all else "any of"
        return f"roles ({self.claim}) {which}: {' '.join(sorted(self.roles))}"


class _PathMatch(Rule):
    """A value found at a dotted path of one document, compared by a matcher; subclasses say
    which document (``_document``) and how it is called in denials and summaries (``kind``)."""

    __slots__ = ("get", "match", "path", "text")

    def __init__(self, label: str, path: str, matcher: str, expected: Any) -> None:
        super().__init__(label)
        self.path = path
        self.get = claim_getter(path)
        self.match, self.text = build_matcher(matcher, expected)

    def _document(self, ctx: Context) -> Any:
        raise NotImplementedError

    def check(self, ctx: Context) -> RuleDenied | None:
        value = self.get(self._document(ctx))
        if self.match(value):
            return None
        got = "absent" if value is None else f"is {shown(value)}"
        return self._forbidden(f"{self.kind} {self.path} {got}")

    def summary(self) -> str:
        return f"{self.kind} {self.path} {self.text}"


class ClaimMatch(_PathMatch):
    """A claim of the verified identity (``claim: {path: org.id, equals: ...}``)."""

    __slots__ = ()
    kind = "claim"

    def _document(self, ctx: Context) -> Any:
        return ctx.identity.claims


class MetadataMatch(_PathMatch):
    """A value from a metadata lookup (``metadata: {path: doc.owner, equals: ...}``)."""

    __slots__ = ()
    kind = "metadata"

    def _document(self, ctx: Context) -> Any:
        return ctx.metadata


class Consumers(Rule):
    __slots__ = ("allow", "deny")
    kind = "consumers"

    def __init__(self, label: str, allow: Sequence[str] | None, deny: Sequence[str]) -> None:
        super().__init__(label)
        self.allow = None if allow is None else frozenset(allow)
        self.deny = frozenset(deny)

    def check(self, ctx: Context) -> RuleDenied | None:
        consumer = ctx.identity.consumer
        if consumer is not None and consumer in self.deny:
            detail = f"consumer {consumer!r} is denied"
        elif self.allow is not None and consumer not in self.allow:
            detail = f"consumer {consumer!r} is not allowed" if consumer else "no consumer"
        else:
            return None
        return RuleDenied(Reason.CONSUMER_NOT_ALLOWED, "consumer not allowed", detail,
                          rule=self.label)

    def summary(self) -> str:
        return _allow_deny("consumer", self.allow, self.deny)


class Subjects(Rule):
    """Exact subjects (SPIFFE IDs, JWT ``sub``, consumer names); ``prefix*`` entries match
    a prefix when ``prefixes`` is enabled (the ``rules:`` form; the shorthand key is exact)."""

    __slots__ = ("allow", "allow_prefixes", "deny", "deny_prefixes", "text")
    kind = "subjects"

    def __init__(self, label: str, allow: Sequence[str] | None, deny: Sequence[str], *,
                 prefixes: bool) -> None:
        super().__init__(label)

        def split(entries: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
            if not prefixes:
                return frozenset(entries), ()
            return (frozenset(e for e in entries if not e.endswith("*")),
                    tuple(e[:-1] for e in entries if e.endswith("*")))

        self.allow, self.allow_prefixes = split(allow or ())
        self.deny, self.deny_prefixes = split(deny)
        self.text = _allow_deny("subject", None if allow is None else list(allow), list(deny))
        if allow is None:
            self.allow_prefixes = ("",)  # everything is allowed unless denied

    @staticmethod
    def _in(subject: str, exact: frozenset[str], prefixes: tuple[str, ...]) -> bool:
        return subject in exact or any(subject.startswith(p) for p in prefixes)

    #: what is compared, in messages
    what = "subject"

    def value(self, ctx: Context) -> str:
        """The compared value: the identity's subject."""
        return ctx.identity.subject

    def check(self, ctx: Context) -> RuleDenied | None:
        subject = self.value(ctx)
        if self._in(subject, self.deny, self.deny_prefixes):
            return self._forbidden(f"{self.what} {shown(subject)} is denied")
        if not self._in(subject, self.allow, self.allow_prefixes):
            return self._forbidden(f"{self.what} {shown(subject) if subject else '(none)'} "
                                   "is not allowed")
        return None

    def summary(self) -> str:
        return self.text


class Principal(Subjects):
    """The mesh peer's verified identity: ``attributes.source.principal`` of the gRPC check
    request (Envoy sets it from the downstream TLS peer certificate it verified: the first URI
    SAN, the SPIFFE ID under Istio, else the subject). Only the gRPC transport carries it; on the
    HTTP transport it is empty, so an allow list denies there (fail closed)."""

    __slots__ = ()
    kind = "principal"
    what = "principal"

    def __init__(self, label: str, allow: Sequence[str] | None, deny: Sequence[str]) -> None:
        super().__init__(label, allow, deny, prefixes=True)
        self.text = _allow_deny("principal", None if allow is None else list(allow), list(deny))

    def value(self, ctx: Context) -> str:
        """The peer principal Envoy reported (empty when none)."""
        return ctx.view.source_principal


def _allow_deny(what: str, allow: Any, deny: Any) -> str:
    parts = []
    if allow is not None:
        parts.append(f"{what} in [{', '.join(sorted(allow))}]")
    if deny:
        parts.append(f"{what} not in [{', '.join(sorted(deny))}]")
    return " and ".join(parts)


class Methods(Rule):
    __slots__ = ("methods",)
    kind = "methods"

    def __init__(self, label: str, methods: Sequence[str]) -> None:
        super().__init__(label)
        self.methods = frozenset(methods)

    def check(self, ctx: Context) -> RuleDenied | None:
        if ctx.view.method in self.methods:
            return None
        return self._forbidden(f"method {ctx.view.method} is not allowed")

    def summary(self) -> str:
        return f"method in [{', '.join(sorted(self.methods))}]"


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Source(Rule):
    __slots__ = ("allow", "deny")
    kind = "source"

    def __init__(self, label: str, allow: Sequence[str] | None, deny: Sequence[str]) -> None:
        super().__init__(label)
        self.allow: tuple[Network, ...] | None = (
            None if allow is None else tuple(ipaddress.ip_network(c) for c in allow))
        self.deny: tuple[Network, ...] = tuple(ipaddress.ip_network(c) for c in deny)

    def check(self, ctx: Context) -> RuleDenied | None:
        ip = parse_address(ctx.view.source_address)
        if ip is None:
            return self._forbidden("no usable source address")
        if any(ip in net for net in self.deny):
            return self._forbidden(f"source {ip} is in a denied network")
        if self.allow is not None and not any(ip in net for net in self.allow):
            return self._forbidden(f"source {ip} is not in an allowed network")
        return None

    def summary(self) -> str:
        allow = None if self.allow is None else [str(n) for n in self.allow]
        return _allow_deny("source", allow, [str(n) for n in self.deny])


class HeaderMatch(Rule):
    """Header values are never shown in a trace: a header may carry a credential."""

    __slots__ = ("match", "name", "text")
    kind = "header"

    def __init__(self, label: str, name: str, matcher: str, expected: Any) -> None:
        super().__init__(label)
        self.name = name
        self.match, self.text = build_matcher(matcher, expected, header=True)

    def check(self, ctx: Context) -> RuleDenied | None:
        value = ctx.view.headers.value(self.name)
        if self.match(value):
            return None
        got = "absent" if value is None else "present, value does not match"
        return self._forbidden(f"header {self.name} {got}")

    def summary(self) -> str:
        return f"header {self.name} {self.text}"


class QueryMatch(Rule):
    __slots__ = ("match", "name", "text")
    kind = "query"

    def __init__(self, label: str, name: str, matcher: str, expected: Any) -> None:
        super().__init__(label)
        self.name = name
        self.match, self.text = build_matcher(matcher, expected, header=True)

    def check(self, ctx: Context) -> RuleDenied | None:
        value = ctx.view.query.get(self.name)
        if self.match(value):
            return None
        got = "absent" if value is None else "present, value does not match"
        return self._forbidden(f"query parameter {self.name} {got}")

    def summary(self) -> str:
        return f"query {self.name} {self.text}"


#: an ``equal`` operand: ctx -> comparable text (None = absent / not comparable)
Operand = Callable[[Context], str | None]


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def build_operand(kind: str, name: str) -> Operand:
    """Compile one side of an ``equal`` rule."""
    if kind == "param":
        return lambda ctx: ctx.params.get(name)
    if kind == "claim":
        get = claim_getter(name)
        return lambda ctx: _text(get(ctx.identity.claims))
    if kind == "header":
        return lambda ctx: ctx.view.headers.value(name)
    if kind == "query":
        return lambda ctx: ctx.view.query.get(name)
    if kind == "metadata":
        get_meta = claim_getter(name)
        return lambda ctx: _text(get_meta(ctx.metadata))
    if kind == "identity":
        if name == "subject":
            return lambda ctx: ctx.identity.subject
        if name == "consumer":
            return lambda ctx: ctx.identity.consumer
        if name == "method":
            return lambda ctx: ctx.identity.method.value
    raise ValueError(f"unknown operand {kind}: {name}")


class Equal(Rule):
    """Two values must be present, non-empty and equal (as text; a numeric claim compares as
    its decimal form). Header values are not shown in the trace."""

    __slots__ = ("left", "right", "sides")
    kind = "equal"

    def __init__(self, label: str, operands: Sequence[tuple[str, str]]) -> None:
        super().__init__(label)
        (lk, ln), (rk, rn) = operands
        self.sides = ((lk, ln), (rk, rn))
        self.left = build_operand(lk, ln)
        self.right = build_operand(rk, rn)

    def check(self, ctx: Context) -> RuleDenied | None:
        left, right = self.left(ctx), self.right(ctx)
        if left and right and left == right:
            return None
        return self._forbidden(f"{self._show(0, left)} != {self._show(1, right)}")

    def _show(self, side: int, value: str | None) -> str:
        kind, name = self.sides[side]
        if value is None or value == "":
            return f"{kind} {name} (absent)"
        if kind == "header":
            return f"{kind} {name} (present)"
        return f"{kind} {name} {shown(value)}"

    def summary(self) -> str:
        (lk, ln), (rk, rn) = self.sides
        return f"{lk} {ln} == {rk} {rn}"


class Cel(Rule):
    __slots__ = ("program",)
    kind = "cel"

    def __init__(self, label: str, program: CelProgram) -> None:
        super().__init__(label)
        self.program = program

    def check(self, ctx: Context) -> RuleDenied | None:
        try:
            if self.program.evaluate(ctx.cel_activation()):
                return None
        except CelEvalError as exc:
            return RuleDenied(Reason.POLICY_ERROR, "policy evaluation error",
                              f"CEL evaluation error: {exc}", rule=self.label)
        return self._forbidden("CEL expression is false")

    def summary(self) -> str:
        return f"cel: {self.program.source}"


class AnyOf(Rule):
    __slots__ = ("rules",)
    kind = "any_of"

    def __init__(self, label: str, rules: Sequence[Rule]) -> None:
        super().__init__(label)
        self.rules = tuple(rules)

    def check(self, ctx: Context) -> RuleDenied | None:
        first: RuleDenied | None = None
        for rule in self.rules:
            denied = rule.check(ctx)
            if denied is None:
                return None
            if first is None:
                first = denied
        return self._wrap(first)

    def _wrap(self, first: RuleDenied | None) -> RuleDenied | None:
        if first is None:
            return None
        return RuleDenied(first.reason, first.description,
                          f"no alternative passed (first: {first.detail})",
                          scope=first.scope, rule=self.label)

    def explain(self, ctx: Context) -> tuple[RuleDenied | None, RuleResult]:
        children: list[RuleResult] = []
        first: RuleDenied | None = None
        passed = False
        for rule in self.rules:
            if passed:
                children.append(_skipped(rule))
                continue
            denied, result = rule.explain(ctx)
            children.append(result)
            if denied is None:
                passed = True
            elif first is None:
                first = denied
        verdict = None if passed else self._wrap(first)
        return verdict, self._result(verdict, children)

    def summary(self) -> str:
        return f"any of {len(self.rules)} alternatives"


class AllOf(Rule):
    __slots__ = ("rules",)
    kind = "all_of"

    def __init__(self, label: str, rules: Sequence[Rule]) -> None:
        super().__init__(label)
        self.rules = tuple(rules)

    def check(self, ctx: Context) -> RuleDenied | None:
        for rule in self.rules:
            denied = rule.check(ctx)
            if denied is not None:
                return self._wrap(denied)
        return None

    def _wrap(self, denied: RuleDenied) -> RuleDenied:
        return RuleDenied(denied.reason, denied.description, denied.detail,
                          scope=denied.scope, rule=self.label)

    def explain(self, ctx: Context) -> tuple[RuleDenied | None, RuleResult]:
        children: list[RuleResult] = []
        verdict: RuleDenied | None = None
        for rule in self.rules:
            if verdict is not None:
                children.append(_skipped(rule))
                continue
            denied, result = rule.explain(ctx)
            children.append(result)
            if denied is not None:
                verdict = self._wrap(denied)
        return verdict, self._result(verdict, children)

    def summary(self) -> str:
        return f"all of {len(self.rules)} rules"


def _skipped(rule: Rule) -> RuleResult:
    return RuleResult(rule.label, rule.kind, rule.summary(), "skipped")
