"""Stopping a background task without losing the caller's own cancellation.

``task.cancel()`` followed by ``with suppress(CancelledError): await task`` has a trap: if the
*caller* is cancelled while it waits, that cancellation is raised by the same ``await`` and
swallowed too, so the caller carries on as if nothing asked it to stop (a stream went on to
reconnect forever that way). :func:`stop_task` waits with :func:`asyncio.wait`, which never
raises the task's outcome, so a ``CancelledError`` out of it can only be the caller's own.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and return once it has ended.

    The task's own cancellation is what was asked for and is not raised; an exception it ended
    with is. A cancellation of the caller while waiting propagates (the task, already
    cancelled, finishes on its own)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error
