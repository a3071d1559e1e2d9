"""AuthZEN (OpenID AuthZEN Authorization API 1.0): the PDP client and the ``authzen`` rule.

:class:`Pdp` calls the Access Evaluation API (``POST /access/v1/evaluation``) and its batched
form (``POST /access/v1/evaluations``). With ``discovery: true`` the endpoints come from
``{url}/.well-known/authzen-configuration``, whose ``policy_decision_point`` must equal the
configured URL (a metadata document naming another PDP is refused) and whose endpoints must pass
the outbound rules (https off loopback).

A decision is allowed only when the PDP answers 200 with ``"decision": true`` (a JSON boolean);
``false``, any other value, another status or an unreadable body is not an allow. A PDP
``context`` (reasons) is kept, bounded, for the decision log and ``check --explain``.

:class:`AuthzenCheck` is the compiled rule. The PDP is asked *before* the policy is evaluated
(:mod:`extauthz.external.stage`), and the rule reads the answer when its turn comes, so rule
order, ``any_of`` and ``all_of`` keep their meaning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.authz.rules import Context, Rule, RuleDenied, RuleResult
from extauthz.config.external import AuthzenRule, PdpSpec
from extauthz.errors import DependencyUnavailable, Reason
from extauthz.external.cache import CallCache, CallFailed
from extauthz.external.client import Target
from extauthz.external.mapping import RenderError, Template, compile_template
from extauthz.external.metrics import ExternalMetrics
from extauthz.outbound import OutboundPolicy

WELL_KNOWN = "/.well-known/authzen-configuration"
EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
#: how much of a PDP's ``context`` is kept for logs and traces
MAX_CONTEXT_CHARS = 512
_DISCOVERY_TTL = 3600.0


class Pdp(Target):
    """One configured PDP."""

    kind = "pdp"

    def __init__(self, name: str, spec: PdpSpec, policy: OutboundPolicy,
                 metrics: ExternalMetrics) -> None:
        super().__init__(name, spec, policy, metrics)
        self.base = spec.url.rstrip("/")
        policy.check_url(self.base, "url")
        self.discovery = spec.discovery
        self.headers = {k.lower(): v for k, v in spec.headers.items()}
        self._discovered = CallCache(
            "pdp_discovery", name, ttl=_DISCOVERY_TTL, negative_ttl=spec.negative_ttl_seconds,
            max_entries=1, max_concurrency=1, metrics=metrics)

    async def endpoints(self) -> tuple[str, str | None]:
        """(evaluation URL, evaluations URL or None) — discovered once, then cached."""
        if not self.discovery:
            return self.base + EVALUATION, self.base + EVALUATIONS
        found: tuple[str, str | None] = await self._discovered.get("", self._discover)
        return found

    async def _discover(self) -> tuple[str, str | None]:
        status, doc = await self.exchange("GET", self.base + WELL_KNOWN)
        if status != 200 or not isinstance(doc, dict):
            raise self.fail("invalid", f"discovery answered {status}")
        if str(doc.get("policy_decision_point", "")).rstrip("/") != self.base:
            raise self.fail("invalid", "discovery names another policy_decision_point")
        single = doc.get("access_evaluation_endpoint")
        batch = doc.get("access_evaluations_endpoint")
        if not isinstance(single, str) or self.policy.url_problem(single) is not None:
            raise self.fail("invalid", "discovery has no usable access_evaluation_endpoint")
        if not isinstance(batch, str) or self.policy.url_problem(batch) is not None:
            batch = None
        return single, batch

    async def evaluate(self, request: Mapping[str, Any]) -> tuple[bool, Any]:
        """(allowed, context) of one Access Evaluation request."""
        key = "1 " + json.dumps(request, sort_keys=True, separators=(",", ":"))

        async def call() -> tuple[bool, Any]:
            url, _ = await self.endpoints()
            status, body = await self.exchange("POST", url, headers=self.headers, body=request)
            return self._decision(status, body)

        answer: tuple[bool, Any] = await self.cached(key, call)
        return answer

    async def evaluate_many(self, request: Mapping[str, Any], count: int
                            ) -> list[tuple[bool, Any]]:
        """One (allowed, context) per item of an Access Evaluations (batch) request."""
        key = "n " + json.dumps(request, sort_keys=True, separators=(",", ":"))

        async def call() -> list[tuple[bool, Any]]:
            _, url = await self.endpoints()
            if url is None:
                raise self.fail("invalid", "the PDP offers no access_evaluations_endpoint")
            status, body = await self.exchange("POST", url, headers=self.headers, body=request)
            items = body.get("evaluations") if status == 200 and isinstance(body, dict) else None
            if not isinstance(items, list) or len(items) != count:
                raise self.fail("invalid", f"evaluations answer unusable (status {status})")
            return [self._decision(200, item) for item in items]

        answers: list[tuple[bool, Any]] = await self.cached(key, call)
        return answers

    def _decision(self, status: int, body: Any) -> tuple[bool, Any]:
        if status != 200 or not isinstance(body, dict) or type(body.get("decision")) is not bool:
            raise self.fail("invalid", f"no boolean decision (status {status})")
        return body["decision"] is True, body.get("context")


@dataclass(frozen=True, slots=True)
class PdpAnswer:
    """What the PDP said for one rule (``error`` set: it could not answer)."""

    pdp: str
    rule: str
    allowed: bool = False
    decisions: tuple[bool, ...] = ()
    context: str = ""
    error: str = ""
    fallback: str = ""

    def to_json(self) -> dict[str, Any]:
        """The decision-log form."""
        out: dict[str, Any] = {"pdp": self.pdp, "rule": self.rule, "decision": self.allowed}
        if len(self.decisions) > 1:
            out["decisions"] = list(self.decisions)
        if self.context:
            out["context"] = self.context
        if self.error:
            out["error"] = self.error
        if self.fallback:
            out["fallback"] = self.fallback
        return out

    def describe(self) -> str:
        """One line for ``check --explain``."""
        if self.error:
            return f"PDP {self.pdp} could not answer: {self.error}" + (
                f" (on_error: {self.fallback})" if self.fallback else "")
        text = f"PDP {self.pdp}: decision {str(self.allowed).lower()}"
        if len(self.decisions) > 1:
            text += f" ({', '.join(str(d).lower() for d in self.decisions)})"
        return text + (f"; context {self.context}" if self.context else "")


def _context_text(contexts: list[Any]) -> str:
    shown = [c for c in contexts if c]
    if not shown:
        return ""
    text = json.dumps(shown[0] if len(shown) == 1 else shown, sort_keys=True,
                      separators=(",", ":"), default=str)
    return text if len(text) <= MAX_CONTEXT_CHARS else text[:MAX_CONTEXT_CHARS] + "…"


class AuthzenCheck(Rule):
    """The compiled ``authzen`` rule (see the module docstring)."""

    __slots__ = ("batch", "combine", "on_error", "pdp", "templates")
    kind = "authzen"

    def __init__(self, label: str, spec: AuthzenRule, pdp: Pdp) -> None:
        super().__init__(label)
        self.pdp = pdp
        self.on_error = spec.on_error
        self.combine = spec.combine
        self.templates: dict[str, Template] = {}
        for field in ("subject", "action", "resource", "context"):
            value = getattr(spec, field)
            if value is not None:
                self.templates[field] = compile_template(value, field)
        self.batch: list[dict[str, Template]] | None = None
        if spec.evaluations is not None:
            self.batch = []
            for i, item in enumerate(spec.evaluations):
                self.batch.append({
                    field: compile_template(getattr(item, field), f"evaluations[{i}].{field}")
                    for field in ("subject", "action", "resource", "context")
                    if getattr(item, field) is not None})

    @property
    def names(self) -> frozenset[str]:
        """The variables the rule's templates read."""
        out: set[str] = set()
        for group in [self.templates, *(self.batch or [])]:
            for template in group.values():
                out |= template.names
        return frozenset(out)

    def summary(self) -> str:
        size = f", {len(self.batch)} evaluations ({self.combine})" if self.batch else ""
        return f"authzen pdp {self.pdp.name}{size}"

    async def ask(self, data: Mapping[str, Any]) -> PdpAnswer:
        """Ask the PDP (the stage calls this before the policy runs); never raises."""
        try:
            base = {k: t.render(data) for k, t in self.templates.items()}
            if self.batch is None:
                allowed, context = await self.pdp.evaluate(base)
                return PdpAnswer(self.pdp.name, self.label, allowed, (allowed,),
                                 _context_text([context]))
            items = [{k: t.render(data) for k, t in item.items()} for item in self.batch]
            request = {**base, "evaluations": items}
            answers = await self.pdp.evaluate_many(request, len(items))
        except RenderError as exc:
            return PdpAnswer(self.pdp.name, self.label, error=f"mapping: {exc}",
                             fallback="deny")
        except CallFailed as exc:
            if self.on_error != "fail_closed":
                self.pdp.metrics.fallback("pdp", self.pdp.name, self.on_error)
            return PdpAnswer(self.pdp.name, self.label, error=exc.result,
                             fallback=self.on_error)
        decisions = tuple(a for a, _ in answers)
        allowed = all(decisions) if self.combine == "all" else any(decisions)
        return PdpAnswer(self.pdp.name, self.label, allowed, decisions,
                         _context_text([c for _, c in answers]))

    def _verdict(self, ctx: Context) -> tuple[RuleDenied | None, PdpAnswer | None]:
        external = ctx.external
        answer = None if external is None else external.answers.get(self.label)
        if answer is None:
            return self._forbidden("the PDP was not asked"), None
        if answer.error:
            if answer.fallback == "allow":
                return None, answer
            if answer.fallback == "fail_closed":
                raise DependencyUnavailable(Reason.DEPENDENCY_UNAVAILABLE,
                                            "authorization service unavailable",
                                            answer.describe())
            return self._forbidden(answer.describe()), answer
        if answer.allowed:
            return None, answer
        return self._forbidden(answer.describe()), answer

    def check(self, ctx: Context) -> RuleDenied | None:
        return self._verdict(ctx)[0]

    def explain(self, ctx: Context) -> tuple[RuleDenied | None, RuleResult]:
        denied, answer = self._verdict(ctx)
        result = self._result(denied)
        if answer is not None:
            result.detail = answer.describe()
        return denied, result
