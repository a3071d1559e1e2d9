"""extauthz.eager.start: a check that never suspends needs no task; one that does keeps every
task semantic (current_task, asyncio.timeout, cancellation).

The HTTP transport starts checks from protocol callbacks, where no task is running: these tests
call :func:`start` the same way (from ``loop.call_soon``), so the stand-in path is the one tested
on Python 3.11 (3.12+ uses the standard library's eager task factory).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from extauthz import eager


async def from_callback(make: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Future[Any]:
    """``eager.start(make())`` called from a loop callback, as a protocol's data_received is."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Future[Any]] = loop.create_future()
    loop.call_soon(lambda: started.set_result(eager.start(make(), loop)))
    return await started


async def test_a_coroutine_that_never_suspends_is_finished_at_once_without_a_task() -> None:
    seen: list[Any] = []

    async def decide() -> str:
        seen.append(asyncio.current_task())
        return "allow"

    future = await from_callback(decide)
    assert future.done() and future.result() == "allow"
    assert not isinstance(future, asyncio.Task) or eager._EAGER is not None
    assert seen[0] is not None, "current_task() must work in the first step"


async def test_an_exception_in_the_first_step_is_held_by_the_future() -> None:
    async def broken() -> str:
        raise ValueError("boom")

    future = await from_callback(broken)
    assert future.done()
    with pytest.raises(ValueError, match="boom"):
        future.result()


async def test_a_coroutine_that_suspends_continues_in_a_task() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        return "later"

    future = await from_callback(slow)
    assert not future.done()
    assert await asyncio.wait_for(future, 5) == "later"


async def test_asyncio_timeout_entered_before_the_first_suspension_still_fires() -> None:
    """Issue 13.5's shape: ``async with asyncio.timeout(...)`` around a Redis call, entered in
    the first step (with the stand-in as current task), expiring after the task took over."""
    async def too_slow() -> str:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(5)
        return "not reached"

    future = await from_callback(too_slow)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 5)


async def test_asyncio_timeout_that_does_not_expire_leaves_the_result_alone() -> None:
    async def in_time() -> str:
        async with asyncio.timeout(1):
            await asyncio.sleep(0.01)
        async with asyncio.timeout(1):  # a second one, entered inside the task
            await asyncio.sleep(0)
        return "ok"

    future = await from_callback(in_time)
    assert await asyncio.wait_for(future, 5) == "ok"


async def test_cancelling_the_task_cancels_the_suspended_coroutine() -> None:
    cleaned: list[bool] = []

    async def waits() -> str:
        try:
            await asyncio.sleep(5)
        finally:
            cleaned.append(True)
        return "not reached"

    future = await from_callback(waits)
    await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned == [True]


async def test_a_cancellation_caught_inside_the_coroutine_is_its_own_business() -> None:
    async def shielded() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return "handled"
        return "not reached"

    future = await from_callback(shielded)
    await asyncio.sleep(0)
    future.cancel()
    assert await asyncio.wait_for(future, 5) == "handled"


async def test_an_exception_after_suspending_reaches_the_task() -> None:
    async def fails_later() -> str:
        await asyncio.sleep(0)
        raise KeyError("late")

    future = await from_callback(fails_later)
    with pytest.raises(KeyError):
        await asyncio.wait_for(future, 5)


async def test_inside_a_running_task_it_is_an_ordinary_task() -> None:
    async def decide() -> str:
        return "allow"

    future = eager.start(decide())  # called from this test's own task
    assert await future == "allow"


async def test_the_loop_has_no_current_task_left_behind() -> None:
    loop = asyncio.get_running_loop()

    async def decide() -> str:
        await asyncio.sleep(0)
        return "x"

    await from_callback(decide)
    probe: asyncio.Future[Any] = loop.create_future()
    loop.call_soon(lambda: probe.set_result(asyncio.current_task(loop)))
    assert await probe is None


def test_the_stand_in_applies_cancellation_requested_before_a_task_took_over() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stand_in = eager._StandIn(loop)
        assert stand_in.cancel() and stand_in.cancelling() == 1
        assert stand_in.uncancel() == 0
        stand_in.cancel()

        async def forever() -> None:
            await asyncio.sleep(5)

        task = loop.create_task(forever())
        stand_in.adopt(task)
        assert stand_in.cancelling() == task.cancelling() == 1
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stand_in.done() and stand_in.get_loop() is loop

    asyncio.run(main())


_PARENT: contextvars.ContextVar[str] = contextvars.ContextVar("parent", default="unset")


def test_a_context_variable_set_by_the_check_does_not_leak_into_the_caller() -> None:
    """As with a task: the first step runs in a copy of the caller's context, and a check that
    suspends goes on in that same copy."""

    async def sets_and_finishes() -> str:
        _PARENT.set("check-1")
        return _PARENT.get()

    async def sets_then_suspends() -> str:
        _PARENT.set("check-2")
        await asyncio.sleep(0)
        return _PARENT.get()

    loop = asyncio.new_event_loop()
    try:
        results: list[str] = []

        def from_a_callback() -> None:  # like data_received: outside any task
            first = eager.start(sets_and_finishes(), loop)
            results.append(first.result())
            results.append(_PARENT.get())
            second = eager.start(sets_then_suspends(), loop)
            second.add_done_callback(lambda f: results.append(f.result()))
            results.append(_PARENT.get())

        loop.call_soon(from_a_callback)
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
    assert results == ["check-1", "unset", "unset", "check-2"]
