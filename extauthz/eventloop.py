"""The event loop ``extauthz serve`` runs on: uvloop when it is installed, else asyncio's own.

``serve --event-loop`` (env ``EXTAUTHZ_EVENT_LOOP``) chooses:

* ``auto`` (the default): uvloop when it can be imported, asyncio's loop otherwise (uvloop has no
  Windows build; a platform without a wheel still serves);
* ``uvloop``: uvloop or refuse to start (:class:`Unavailable`);
* ``asyncio``: the standard library's loop.

Why uvloop: every check the HTTP transport answers costs the loop an ``epoll`` turn, a socket
read and a write; uvloop (libuv, Cython) does those in C where asyncio's selector loop runs
Python for each. Measured through Envoy in docs/performance.md ("Event loop"). The decisions do
not depend on the loop: every transport and :mod:`extauthz.eager` use only the public asyncio
API plus ``asyncio.tasks._enter_task``/``_leave_task``, which work on any loop.

:func:`run` logs the loop it actually runs on (``event loop: uvloop``), taken from the running
loop's type, not from the option.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["CHOICES", "Unavailable", "loop_factory", "run", "running_loop_name"]

log = logging.getLogger("extauthz.eventloop")
T = TypeVar("T")

#: the values of ``serve --event-loop``
CHOICES = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class Unavailable(RuntimeError):
    """``--event-loop uvloop`` was asked for and uvloop cannot be imported."""


def loop_factory(choice: str) -> LoopFactory | None:
    """The factory of the loop ``choice`` names (None: asyncio's default loop).

    Raises :class:`Unavailable` for ``uvloop`` when it is not installed, ValueError for a name
    not in :data:`CHOICES`.
    """
    if choice not in CHOICES:
        raise ValueError(f"event loop {choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise Unavailable("--event-loop uvloop needs uvloop (pip install uvloop); "
                              "or --event-loop asyncio") from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.split(".", 1)[0]


async def _announced(main: Coroutine[Any, Any, T]) -> T:
    log.info("event loop: %s", running_loop_name())
    return await main


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``factory`` makes (None: asyncio's), logging which."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_announced(main))
