"""Rate-limit keys: who one limit counts, computed from the verified request.

A key is made of parts (``consumer``, ``subject``, ``api_key``, ``client_address``, ``route``,
``method``, ``plan``, or a CEL expression returning a string). Each part's value is prefixed with
its name and the parts are joined with a separator that no value can forge (values are
length-prefixed), so ``consumer=a|b`` and two parts ``a`` and ``b`` never collide.

Keys longer than :data:`MAX_PLAIN_KEY` characters are replaced by a 128-bit BLAKE2b digest, so
memory per tracked key is bounded whatever a subject or a CEL result holds.

A part with no value (``consumer`` for a JWT without a consumer, ``subject`` on a public route, an
empty client address, a CEL expression that fails or returns ``""``) makes the whole limit *not
apply* to the request; ``check --explain`` and the ``skipped`` metric say so. Counting every such
request under one shared key instead would let one client exhaust everyone's quota.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.authz import cel
from extauthz.types import AuthMethod, Identity, RequestView


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What a key part may read."""

    view: RequestView
    identity: Identity | None
    route: str
    plan: str
    params: Mapping[str, str]


Part = Callable[[KeyContext], str]


def _consumer(ctx: KeyContext) -> str:
    return (ctx.identity.consumer or "") if ctx.identity is not None else ""


def _subject(ctx: KeyContext) -> str:
    """``authenticator/subject``: two issuers may both have a ``sub`` 123 (different people)."""
    identity = ctx.identity
    if identity is None or not identity.subject:
        return ""
    return f"{identity.authenticator}/{identity.subject}"


def subject(ctx: KeyContext) -> str:
    """The bare subject (descriptors for Envoy: the service sees what the upstream sees)."""
    return ctx.identity.subject if ctx.identity is not None else ""


#: methods whose ``key_id`` names the client's own credential (a JWT's is the issuer's signing key)
_KEYED = frozenset({AuthMethod.API_KEY, AuthMethod.HMAC})


def _api_key(ctx: KeyContext) -> str:
    """``authenticator/consumer/key id``: key ids are unique only within a consumer (API keys) or
    an authenticator (HMAC); names cannot contain ``/`` so the join is unambiguous."""
    identity = ctx.identity
    if identity is None or not identity.key_id or identity.method not in _KEYED:
        return ""
    return f"{identity.authenticator}/{identity.consumer or ''}/{identity.key_id}"


PARTS: Mapping[str, Part] = {
    "consumer": _consumer,
    "subject": _subject,
    "api_key": _api_key,
    "client_address": lambda ctx: ctx.view.source_address,
    "route": lambda ctx: ctx.route,
    "method": lambda ctx: ctx.view.method,
    "plan": lambda ctx: ctx.plan,
}


@dataclass(frozen=True, slots=True)
class CelPart:
    """A key part computed by a CEL expression (it must return a string)."""

    source: str
    expression: Any
    names: frozenset[str]

    def __call__(self, ctx: KeyContext) -> str:
        identity = ctx.identity or _ANONYMOUS
        data = cel.activation_data(ctx.view, identity, ctx.route, ctx.params, self.names)
        try:
            value = self.expression.eval(activation=cel.environment().Activation(data=data))
            if value.type() != cel.runtime().Type.STRING:  # an error value, or not a string
                return ""
            result = value.value()
        except Exception:  # evaluation failed: the limit does not apply (module docstring)
            return ""
        return result if type(result) is str else ""


#: what CEL sees as ``identity`` on a public route (every member empty)
_ANONYMOUS = Identity(method=AuthMethod.API_KEY, subject="", authenticator="")


def compile_cel_part(source: str) -> CelPart:
    """Compile a key expression; ``ValueError`` when it does not compile or is not a string."""
    env = cel.environment()
    try:
        expression = env.compile(source)
    except Exception as exc:
        raise ValueError(cel._compile_message(str(exc))) from None
    types = cel.runtime().Type
    result_type = expression.return_type()
    if result_type != types.STRING and result_type != types.DYN:
        raise ValueError(f"must evaluate to a string, not {result_type.name().lower()}")
    return CelPart(source, expression, cel.names_used(source))


#: keys longer than this are replaced by their digest (a subject or a CEL result can be kilobytes;
#: the in-memory table must stay ``max_keys`` x a small size)
MAX_PLAIN_KEY = 96


def render(parts: tuple[tuple[str, Part], ...], ctx: KeyContext) -> str | None:
    """The key of the request, or None when a part has no value (the limit does not apply)."""
    out = []
    for name, part in parts:
        value = part(ctx)
        if not value:
            return None
        out.append(f"{name}:{len(value)}:{value}")
    key = "|".join(out)
    if len(key) > MAX_PLAIN_KEY:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16)
        return "#" + digest.hexdigest()
    return key
