"""Tracing hooks: free when tracing is off, OpenTelemetry (:mod:`extauthz.otel`) when on.

Nothing here imports OpenTelemetry. :func:`configure_from_env` turns tracing on only when the
standard ``OTEL_*`` environment asks for it (see :func:`requested`), and only then imports
:mod:`extauthz.otel` (the ``extauthz[otel]`` extra). Until then :data:`state.tracer` is None and
every hook is one attribute read:

* :meth:`extauthz.pipeline.Engine.check` wraps the check in :meth:`CheckTracer.check` (a span
  per check, the child of the caller's W3C ``traceparent``);
* :func:`outbound_span` decorates the outbound calls (JWKS fetch, introspection, Redis) so they
  become child spans of the check that caused them;
* the gRPC servicer hands over the ``traceparent`` of Envoy's own ext_authz span from the call
  metadata (:func:`set_transport_parent`): with gRPC, Envoy puts its span there, while the
  CheckRequest headers carry only what the client sent.

The tracer is process-wide, like the logging configuration: the server sets it once at start.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from extauthz.errors import ConfigError, ConfigIssue
from extauthz.tracecontext import transport_parent

if TYPE_CHECKING:
    from extauthz.decision import Decision
    from extauthz.types import RequestView

P = ParamSpec("P")
T = TypeVar("T")



class CheckTracer(Protocol):
    """What :mod:`extauthz.otel` provides (the only implementation)."""

    def check(self, view: RequestView,
              decide: Coroutine[Any, Any, Decision]) -> Awaitable[Decision]:
        """Run ``decide`` inside a span for ``view``; returns its decision."""

    def outbound(self, name: str, attributes: Mapping[str, Any]) -> Any:
        """A context manager: a child span of the current check for one outbound call."""

    def shutdown(self) -> None:
        """Export what is buffered and stop."""


class _State:
    __slots__ = ("tracer",)

    def __init__(self) -> None:
        self.tracer: CheckTracer | None = None


#: the process's tracer (None: tracing off)
state = _State()


def requested(env: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces.

    On when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or when an OTLP
    endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set;
    ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure_from_env(env: Mapping[str, str]) -> bool:
    """Install the OpenTelemetry tracer if ``env`` asks for it; True when tracing is on.

    Raises ConfigError when traces are asked for but the ``otel`` extra is not installed or the
    ``OTEL_*`` values are unusable: a process told to trace should not silently not.
    """
    if not requested(env):
        return False
    try:
        otel = importlib.import_module("extauthz.otel")
    except ImportError as exc:
        raise ConfigError([ConfigIssue(
            "environment (OTEL_*)", "traces are configured but OpenTelemetry is not installed: "
            f"pip install 'extauthz[otel]' ({exc.name})")]) from None
    try:
        state.tracer = cast(CheckTracer, otel.OtelCheckTracer.from_env(env))
    except ValueError as exc:
        raise ConfigError([ConfigIssue("environment (OTEL_*)", str(exc))]) from None
    return True


def shutdown() -> None:
    """Flush and stop the tracer (at process exit); a no-op when tracing is off."""
    tracer, state.tracer = state.tracer, None
    if tracer is not None:
        tracer.shutdown()


def set_transport_parent(traceparent: str | None) -> None:
    """Record the transport call's ``traceparent`` for the check about to run (gRPC servicer)."""
    if traceparent:
        transport_parent.set(traceparent)


def safe_url(url: str) -> str:
    """``url`` as a span attribute: scheme, host, port and path (no user info, no query)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def outbound_span(
    name: str, attributes: Callable[..., Mapping[str, Any]] | None = None
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async outbound call: a child span named ``name`` while tracing is on.

    ``attributes`` receives the call's arguments and returns the span attributes; it must never
    return a credential (a URL without its query, an operation name).
    """

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            tracer = state.tracer
            if tracer is None:
                return await fn(*args, **kwargs)
            attrs = attributes(*args, **kwargs) if attributes is not None else {}
            with tracer.outbound(name, attrs):
                return await fn(*args, **kwargs)

        return run

    return wrap
