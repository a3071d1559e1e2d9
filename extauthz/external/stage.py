"""The external stage of a check: metadata lookups, then PDP calls, before the policy runs.

:class:`ExternalHub` holds the configured PDPs and lookups of one snapshot (built at load,
sessions closed with the snapshot). :class:`RouteExternal` is what one route's policy needs;
:meth:`RouteExternal.resolve` runs, for one request:

1. every lookup named in ``authz.metadata``, in parallel; a failed lookup with
   ``on_error: fail_closed`` (the default) ends the check with 503 ``dependency_unavailable``;
   with ``on_error: absent`` its value is null;
2. every ``authzen`` rule of the policy, in parallel (their templates may use ``metadata``);
   each answer (or failure) is kept for the rule to read when its turn comes.

Each call has its own deadline (at most 0.45 s), so the two phases finish before Envoy's 1 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extauthz.authz.cel import activation_data
from extauthz.authz.rules import Rule
from extauthz.errors import DependencyUnavailable, Reason
from extauthz.external.authzen import AuthzenCheck, Pdp, PdpAnswer
from extauthz.external.cache import CallFailed
from extauthz.external.lookups import Lookup
from extauthz.external.mapping import RenderError
from extauthz.external.metrics import ExternalMetrics
from extauthz.outbound import OutboundPolicy
from extauthz.types import Identity, RequestView

if TYPE_CHECKING:
    from extauthz.config.external import AuthzenRule
    from extauthz.config.schema import Settings
    from extauthz.errors import ConfigIssue


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the external stage found for one request."""

    metadata: Mapping[str, Any] = field(default_factory=dict)
    answers: Mapping[str, PdpAnswer] = field(default_factory=dict)

    def log_records(self) -> tuple[dict[str, Any], ...]:
        """The PDP answers in decision-log form."""
        return tuple(a.to_json() for a in self.answers.values())


class ExternalHub:
    """The PDPs and lookups of one snapshot (``settings.pdps``, ``settings.lookups``)."""

    def __init__(self, pdps: Mapping[str, Pdp], lookups: Mapping[str, Lookup]) -> None:
        self.pdps = dict(pdps)
        self.lookups = dict(lookups)

    @classmethod
    def build(cls, settings: Settings, policy: OutboundPolicy, metrics: ExternalMetrics,
              issues: list[ConfigIssue]) -> ExternalHub:
        """Build every PDP and lookup; problems are appended to ``issues`` (located)."""
        from extauthz.errors import ConfigIssue
        from extauthz.external.mapping import TemplateError

        pdps: dict[str, Pdp] = {}
        lookups: dict[str, Lookup] = {}
        for name, pdp_spec in settings.pdps.items():
            try:
                pdps[name] = Pdp(name, pdp_spec, policy, metrics)
            except ValueError as exc:
                issues.append(ConfigIssue(f"settings.pdps.{name}", str(exc)))
        for name, lookup_spec in settings.lookups.items():
            try:
                lookups[name] = Lookup(name, lookup_spec, policy, metrics)
            except (ValueError, TemplateError) as exc:
                issues.append(ConfigIssue(f"settings.lookups.{name}", str(exc)))
        return cls(pdps, lookups)

    def authzen_rule(self, label: str, spec: AuthzenRule) -> AuthzenCheck:
        """The ``authzen`` rule ``label`` asking the PDP ``spec.pdp`` (a name in :attr:`pdps`);
        :class:`~extauthz.external.mapping.TemplateError` (a ``ValueError``) for a template that
        does not compile. The policy compiler calls this
        (:class:`~extauthz.authz.policy.ExternalSources`)."""
        return AuthzenCheck(label, spec, self.pdps[spec.pdp])

    def route_stage(self, lookups: Sequence[str], checks: Sequence[Rule]) -> RouteExternal:
        """What one route runs before its rules: the lookups named in its ``authz.metadata``
        (names in :attr:`lookups`) and its ``authzen`` rules (made by :meth:`authzen_rule`)."""
        chosen = tuple(self.lookups[name] for name in lookups)
        asks: list[AuthzenCheck] = []
        for check in checks:
            if not isinstance(check, AuthzenCheck):  # the compiler's contract: a bug, not config
                raise TypeError(f"{check.label}: not a rule made by authzen_rule")
            asks.append(check)
        names: set[str] = {"identity", "metadata"}
        for lookup in chosen:
            names |= lookup.names
        for ask in asks:
            names |= ask.names
        return RouteExternal(chosen, tuple(asks), frozenset(names))

    def adopt(self, previous: ExternalHub) -> None:
        """Keep the cached answers of ``previous`` (the snapshot being replaced) for every PDP
        and lookup configured identically (same name, same settings, same outbound policy), so
        a reload does not send every cached question to the PDPs at once."""
        pairs = [*((self.pdps[n], previous.pdps.get(n)) for n in self.pdps),
                 *((self.lookups[n], previous.lookups.get(n)) for n in self.lookups)]
        for new, old in pairs:
            if (old is not None and old.kind == new.kind and old.limits == new.limits
                    and old.policy == new.policy):
                new.adopt_cache(old)

    @property
    def empty(self) -> bool:
        return not self.pdps and not self.lookups

    async def close(self) -> None:
        """Close every session."""
        targets = [*self.pdps.values(), *self.lookups.values()]
        await asyncio.gather(*(t.close() for t in targets), return_exceptions=True)


async def _all(*calls: Coroutine[Any, Any, Any]) -> list[Any]:
    """Results (or exceptions) of ``calls``, run concurrently. One call is awaited directly: a
    cache hit then never suspends, where ``gather`` would schedule a task for it."""
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except Exception as exc:
            return [exc]
    return list(await asyncio.gather(*calls, return_exceptions=True))


@dataclass(frozen=True, slots=True)
class RouteExternal:
    """The lookups and PDP rules of one route's policy."""

    lookups: tuple[Lookup, ...] = ()
    checks: tuple[AuthzenCheck, ...] = ()
    #: the variables templates and lookups read (what :func:`activation_data` must build)
    names: frozenset[str] = frozenset()

    async def resolve(self, view: RequestView, identity: Identity, params: Mapping[str, str],
                      route: str, notes: list[str] | None = None) -> Resolved:
        """Run the lookups, then ask the PDPs (see the module docstring). ``notes``: the explain
        trace's notes (``check --explain``), where each lookup and PDP answer is recorded."""
        data = activation_data(view, identity, route, params, self.names)
        metadata: dict[str, Any] = {}
        if self.lookups:
            results = await _all(*(lk.resolve(data, view) for lk in self.lookups))
            for lookup, result in zip(self.lookups, results, strict=True):
                metadata[lookup.name] = self._lookup_value(lookup, result, notes)
        data["metadata"] = metadata
        answers: dict[str, PdpAnswer] = {}
        if self.checks:
            asked = await _all(*(c.ask(data) for c in self.checks))
            for answer in asked:
                if isinstance(answer, BaseException):  # ask() never raises: a bug, fail closed
                    raise answer
            answers = {a.rule: a for a in asked}
            if notes is not None:
                notes.extend(f"{a.rule}: {a.describe()}" for a in asked)
        return Resolved(metadata, answers)

    @staticmethod
    def _lookup_value(lookup: Lookup, result: Any, notes: list[str] | None) -> Any:
        if not isinstance(result, BaseException):
            if notes is not None:
                notes.append(f"metadata {lookup.name}: "
                                   + ("not found (null)" if result is None else "ok"))
            return result
        if isinstance(result, CallFailed):
            why = result.result
        elif isinstance(result, RenderError):
            why = f"mapping: {result}"
        else:
            why = "error"
        if notes is not None:
            notes.append(f"metadata {lookup.name}: failed ({why}); on_error: "
                               f"{lookup.on_error}")
        if lookup.on_error == "absent":
            lookup.metrics.fallback("lookup", lookup.name, "absent")
            return None
        raise DependencyUnavailable(Reason.DEPENDENCY_UNAVAILABLE,
                                    "authorization metadata unavailable",
                                    f"lookup {lookup.name}: {why}")

