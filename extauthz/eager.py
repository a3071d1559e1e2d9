"""Start a coroutine eagerly: a check that decides without awaiting needs no task.

A check whose credential is cached never suspends. Run as an ordinary task it still costs a
``Task`` object, a ``call_soon``, one more turn of the event loop (an ``epoll_wait`` with a zero
timeout, the ready queue, a context switch into the task) before its answer can be written --
about a tenth of the HTTP transport's CPU per check (docs/performance.md). Python 3.12 has
``asyncio.eager_task_factory`` for exactly this and :func:`start` uses it there. On 3.11 it does
the same by hand:

1. the coroutine's first step runs at once (``coro.send(None)``) with a *stand-in* registered as
   the loop's current task, so everything that needs ``asyncio.current_task()`` works
   (``asyncio.timeout`` around every Redis call and outbound fetch: issue 13.5 was a check driven
   outside any task, and every Redis-backed check answered 503);
2. if it finishes, its result (or exception) is returned in a finished future: no task, no loop
   turn;
3. if it suspends, a real task takes the suspended coroutine over (:func:`_resume` hands the task
   whatever the coroutine awaits, and sends or throws back what the task gets), and the stand-in
   forwards ``cancel``/``uncancel``/``cancelling`` to that task from then on, so an
   ``asyncio.timeout`` (or ``TaskGroup``) entered during the first step cancels the task that
   really runs the check. Cancelling the returned task cancels the check, as with
   ``create_task``.

When a task is already running (a caller inside a coroutine), :func:`start` just creates a task:
the stand-in cannot be the current task while another one is.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start"]

T = TypeVar("T")

_EAGER: Any = getattr(asyncio, "eager_task_factory", None)
_enter_task: Any = getattr(asyncio.tasks, "_enter_task", None)
_leave_task: Any = getattr(asyncio.tasks, "_leave_task", None)


class _StandIn:
    """The current task while a coroutine takes its first step outside any task.

    Implements what code run in that step may call on ``asyncio.current_task()``: the
    cancellation protocol (``asyncio.timeout``, ``TaskGroup``), ``done``, ``get_loop``,
    ``get_name``. Requests made before a task adopts the coroutine are kept and applied to it.
    """

    __slots__ = ("_cancel_requests", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requests = 0

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """From now on ``task`` runs the coroutine: forward to it."""
        self._task = task
        for _ in range(self._cancel_requests):
            task.cancel()

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        self._cancel_requests += 1
        return True

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._cancel_requests:
            self._cancel_requests -= 1
        return self._cancel_requests

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else self._cancel_requests

    def done(self) -> bool:
        return self._task.done() if self._task is not None else False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_name(self) -> str:
        return self._task.get_name() if self._task is not None else "eager-check"


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], awaited: Any) -> Generator[Any, Any, T]:
    """Continue ``coro``, suspended on ``awaited``, inside the task that runs this generator:
    every value the coroutine yields goes to the task and every value or exception the task
    sends comes back to the coroutine, so the task waits on (and cancels) what it awaits."""
    while True:
        try:
            sent = yield awaited
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the task throws (cancellation) into the coroutine
            try:
                awaited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                awaited = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


def start(coro: Coroutine[Any, Any, T],
          loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[T]:
    """Run ``coro`` until it first suspends; a finished future when it did not, else its task.

    ``loop``: the running loop (passed by callers that have it: ``get_running_loop`` makes a
    system call on 3.11). Must be called from the loop's thread.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if _EAGER is not None:  # Python 3.12+: the standard library does it
        task: asyncio.Task[T] = _EAGER(loop, coro)
        return task
    if _enter_task is None or asyncio.current_task(loop) is not None:
        return loop.create_task(coro)
    stand_in = _StandIn(loop)
    # A task runs its coroutine in a copy of the context it was created in; so does this, so
    # a context variable the check sets (e.g. the trace parent) never leaks into the caller's
    # context and from there into the next check
    context = contextvars.copy_context()
    _enter_task(loop, stand_in)
    try:
        awaited = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except asyncio.CancelledError:
        done = loop.create_future()
        done.cancel()
        return done
    except BaseException as exc:  # a task would hold it too: the caller reads it
        done = loop.create_future()
        done.set_exception(exc)
        return done
    finally:
        _leave_task(loop, stand_in)
    adopted: asyncio.Task[T] = loop.create_task(_resume(coro, awaited), context=context)
    stand_in.adopt(adopted)
    return adopted
