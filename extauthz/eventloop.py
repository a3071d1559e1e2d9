"""The event loop ``extauthz serve`` runs on: asyncio's own, or uvloop when asked for.

``serve --event-loop`` (env ``EXTAUTHZ_EVENT_LOOP``) chooses:

* ``asyncio`` (the default): the standard library's loop;
* ``uvloop``: libuv's loop (``pip install 'extauthz[uvloop]'``); refused at start
  (:class:`Unavailable`) when uvloop cannot be imported.

Why asyncio stays the default: measured through Envoy (docs/performance.md, "Event loop"),
uvloop made no difference to extauthz's CPU per check that this shared 2-core machine could
show: after the eager start of checks (:mod:`extauthz.eager`) the loop itself is a few per cent
of a check, and the system calls it makes (``epoll_wait``, ``recv``, ``send``) are the same on
both. The option stays for measuring elsewhere (another machine, another Python). Everything
extauthz does on the loop is loop-neutral: the public asyncio API, plus
``asyncio.tasks._enter_task``/``_leave_task`` in :mod:`extauthz.eager`, which work on any loop
(tests/unit/test_eventloop.py runs test_eager's tests on uvloop).

:func:`run` logs the loop it actually runs on (``event loop: asyncio``), taken from the running
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

#: the values of ``serve --event-loop`` (the first is the default)
CHOICES = ("asyncio", "uvloop")

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
        raise Unavailable("--event-loop uvloop needs uvloop (pip install 'extauthz[uvloop]'); "
                          "or --event-loop asyncio") from None
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
