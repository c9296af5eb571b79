"""stop_task: the task's cancellation is swallowed, the caller's never is."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bot.tasks import stop_task

GUARD_S = 10.0
"""Only a guard against a hung test; nothing waits for time to pass."""


async def test_a_stopped_task_ends_cancelled_and_nothing_is_raised() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()


async def test_an_error_the_task_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.wait({task})
    with pytest.raises(RuntimeError, match="boom"):
        await stop_task(task)


async def test_the_callers_cancellation_while_waiting_is_not_swallowed() -> None:
    """The trap ``suppress(CancelledError): await task`` falls into: the stopper is cancelled
    while the task still winds down, and must end cancelled instead of carrying on."""
    winding_down, release = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            winding_down.set()
            await release.wait()  # e.g. a close handshake that completes
            raise

    async def suppressing(task: asyncio.Task[None]) -> str:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "carried on"

    async def stopping(task: asyncio.Task[None]) -> str:
        await stop_task(task)
        return "carried on"

    async with asyncio.timeout(GUARD_S):
        outcomes = []
        for stop in (suppressing, stopping):
            winding_down.clear()
            release.clear()
            task = asyncio.create_task(slow_to_stop())
            await asyncio.sleep(0)
            stopper = asyncio.create_task(stop(task))
            await winding_down.wait()  # the stopper now waits for the task to end
            stopper.cancel()
            release.set()
            await asyncio.wait({stopper, task})
            outcomes.append("cancelled" if stopper.cancelled() else stopper.result())
    assert outcomes == ["carried on", "cancelled"]  # the old pattern lost it; stop_task keeps it
