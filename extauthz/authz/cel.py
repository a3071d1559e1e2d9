"""CEL conditions, compiled once at load with Google's CEL C++ runtime (``cel-expr-python``).

Why this library (measurements in docs/policies.md): it is the CEL project's own runtime, it
type-checks expressions at compile time (``1 + "a"`` or an unknown variable is a configuration
error, not a surprise at request time), it passed every spec case we tried, and it evaluates a
realistic rule in a few microseconds including the conversion of the request into CEL values.

Variables (all maps with string keys; see docs/policies.md for every member):

``request``   method, path, host, scheme, headers (lowercase names), query, source
``identity``  subject, method, methods, consumer, scopes, claims
``route``     name
``params``    the path-template parameters of the route
``metadata``  what the route's metadata lookups returned, by lookup name (docs/authzen.md)
``source``    principal (gRPC ``attributes.source.principal``: the mesh peer's verified SPIFFE
              ID under Istio), address, uri_sans (of the peer certificate Envoy forwarded)

Runtime behaviour: an expression that does not produce ``true`` denies. An evaluation error
(a missing map key, a failed conversion, ...) is reported as :class:`CelEvalError` and the policy
turns it into a fail-closed deny with reason ``policy_error``. The standard CEL semantics apply:
``&&`` and ``||`` absorb errors when the other side decides (``false && error`` is ``false``).
Use ``"x-tenant" in request.headers`` or ``has(identity.claims.tenant)`` to test for presence.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.authz.peer import source_variable
from extauthz.types import Identity, RequestView

#: the variables an expression may use
VARIABLES = ("request", "identity", "route", "params", "metadata", "source")
#: members that are costly to convert, left out when no expression of the policy names them
LAZY_MEMBERS = ("headers", "query", "claims", "uri_sans")
#: everything (what an activation holds when nothing is known about the expressions)
ALL_NAMES = frozenset(VARIABLES + LAZY_MEMBERS)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ERROR_LINE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
_STATUS_PREFIX = re.compile(r"^[A-Z_]+: ")
_NO_CONTAINER = " (in container '')"


class CelCompileError(ValueError):
    """An expression that cannot be compiled; the message is one line, without the source."""


class CelEvalError(Exception):
    """An expression failed at run time (the message is for logs and traces, not for clients)."""


@functools.cache
def runtime() -> Any:
    """The ``cel_expr_python.cel`` module, imported on first use: a configuration without CEL
    rules never loads it."""
    return importlib.import_module("cel_expr_python.cel")


@functools.cache
def environment() -> Any:
    """The one CEL environment: six dynamic map variables and the strings extension."""
    cel = runtime()
    strings = importlib.import_module("cel_expr_python.ext.ext_strings")
    dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    return cel.NewEnv(
        variables={name: dyn_map for name in VARIABLES},
        extensions=[strings.ExtStrings()],
    )


def _compile_message(raw: str) -> str:
    """``INVALID_ARGUMENT: ERROR: <input>:1:4: undeclared reference ...`` -> ``1:4: ...``."""
    found = [f"{m.group(1)}:{m.group(2)}: {m.group(3).replace(_NO_CONTAINER, '').strip()}"
             for m in _ERROR_LINE.finditer(raw)]
    if found:
        return "; ".join(found)
    first = raw.strip().splitlines()[0] if raw.strip() else "invalid expression"
    return _STATUS_PREFIX.sub("", first)


@dataclass(frozen=True, slots=True)
class CelProgram:
    """A compiled expression."""

    source: str
    expression: Any
    #: the variables and costly members the source mentions (see :func:`names_used`)
    names: frozenset[str] = ALL_NAMES

    def evaluate(self, activation: Any) -> bool:
        """True or False; raises CelEvalError when evaluation fails or is not a bool."""
        try:
            value = self.expression.eval(activation=activation)
            result = value.value()
        except Exception as exc:  # the binding raises for conversion problems
            raise CelEvalError(type(exc).__name__) from None
        if type(result) is bool:
            return result
        if value.type() == runtime().Type.ERROR:
            raise CelEvalError(_STATUS_PREFIX.sub("", str(result)))
        raise CelEvalError(f"the result is a {value.type().name().lower()}, not a bool")


def compile_expression(source: str) -> CelProgram:
    """Parse and type-check ``source``; raises CelCompileError with a one-line message."""
    env = environment()
    try:
        expression = env.compile(source)
    except Exception as exc:
        raise CelCompileError(_compile_message(str(exc))) from None
    result_type = expression.return_type()
    types = runtime().Type
    if result_type != types.BOOL and result_type != types.DYN:
        raise CelCompileError(f"must evaluate to a bool, not {result_type.name().lower()}")
    return CelProgram(source, expression, names_used(source))


@dataclass(frozen=True, slots=True)
class CelValueProgram:
    """A compiled expression of any type (an AuthZEN field, a lookup body value)."""

    source: str
    expression: Any
    names: frozenset[str] = ALL_NAMES

    def evaluate_value(self, data: Mapping[str, Any]) -> Any:
        """The value as plain Python (dicts, lists, scalars); raises CelEvalError."""
        try:
            value = self.expression.eval(activation=environment().Activation(data=data))
            if value.type() == runtime().Type.ERROR:
                raise CelEvalError(_STATUS_PREFIX.sub("", str(value.value())))
            return _python(value.value())
        except CelEvalError:
            raise
        except Exception as exc:  # the binding raises for conversion problems
            raise CelEvalError(type(exc).__name__) from None


def _python(value: Any) -> Any:
    """CEL values nested in lists and maps (the binding leaves them wrapped) as Python."""
    if isinstance(value, list):
        return [_python(v.value() if hasattr(v, "value") else v) for v in value]
    if isinstance(value, dict):
        return {str(_python(k.value() if hasattr(k, "value") else k)):
                _python(v.value() if hasattr(v, "value") else v) for k, v in value.items()}
    return value


def compile_value(source: str) -> CelValueProgram:
    """Parse and type-check ``source`` (any result type); raises CelCompileError."""
    env = environment()
    try:
        expression = env.compile(source)
    except Exception as exc:
        raise CelCompileError(_compile_message(str(exc))) from None
    return CelValueProgram(source, expression, names_used(source))


def names_used(source: str) -> frozenset[str]:
    """Which of :data:`ALL_NAMES` appear in ``source`` as identifiers (or inside literals).

    CEL has no way to reach a variable or a member without writing its name (a computed key such
    as ``request["head" + "ers"]`` finds nothing and fails closed), so the activation can leave
    out what no expression names: converting every header and claim into CEL values is the
    largest part of an evaluation's cost. Names inside string literals only make this larger.
    """
    return frozenset(_IDENTIFIER.findall(source)) & ALL_NAMES


def plain(value: Any) -> Any:
    """Convert a claim value into what CEL accepts: dicts with string keys, lists, int64.

    JWT claims come from ``json.loads`` (dicts, lists, strings, numbers, booleans, null), so the
    common case is a cheap copy; integers beyond int64 become doubles, tuples and sets lists.
    """
    kind = type(value)
    if kind is str or kind is bool or kind is float or value is None:
        return value
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else float(value)
    if isinstance(value, Mapping):
        return {k if type(k) is str else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float):  # subclasses (e.g. a StrEnum)
        return plain(kind.__mro__[1](value)) if kind is not bool else bool(value)
    return str(value)


def _headers(view: RequestView) -> dict[str, str]:
    # Headers keeps a dict with lowercase keys: copying it beats a Mapping walk (hot path).
    data = getattr(view.headers, "_data", None)
    out = dict(data) if type(data) is dict else dict(view.headers.items())
    for key, value in out.items():
        if not value.isascii():
            # raw_value bytes that are not UTF-8 arrive as surrogate escapes, which a CEL string
            # cannot hold (the whole rule failed: policy_error); CEL sees U+FFFD for them instead
            out[key] = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return out


def activation_data(
    view: RequestView,
    identity: Identity,
    route: str,
    params: Mapping[str, str],
    names: frozenset[str] = ALL_NAMES,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CEL variables for one request (built only when a CEL rule is evaluated).

    ``names``: which variables and costly members (``headers``, ``query``, ``claims``) to build;
    ``metadata``: the route's lookup results (``metadata`` is an empty map without them).
    """
    data: dict[str, Any] = {}
    if "request" in names:
        request: dict[str, Any] = {
            "method": view.method,
            "path": view.path,
            "host": view.host,
            "scheme": view.scheme,
            "source": view.source_address,
        }
        if "headers" in names:
            request["headers"] = _headers(view)
        if "query" in names:
            request["query"] = dict(view.query)
        data["request"] = request
    if "identity" in names:
        who: dict[str, Any] = {
            "subject": identity.subject,
            "method": identity.method.value,
            "methods": [m.value for m in identity.all_methods],
            "consumer": identity.consumer or "",
            "scopes": sorted(identity.scopes),
        }
        if "claims" in names:
            who["claims"] = plain(identity.claims)
        data["identity"] = who
    if "route" in names:
        data["route"] = {"name": route}
    if "params" in names:
        data["params"] = dict(params)
    if "metadata" in names:
        data["metadata"] = plain(metadata) if metadata else {}
    if "source" in names:
        data["source"] = source_variable(view, "uri_sans" in names)
    return data


def activation(
    view: RequestView,
    identity: Identity,
    route: str,
    params: Mapping[str, str],
    names: frozenset[str] = ALL_NAMES,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """A CEL activation for one request, shared by every CEL rule of the policy."""
    return environment().Activation(
        data=activation_data(view, identity, route, params, names, metadata))
