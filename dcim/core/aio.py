"""asyncio helpers the standard library lacks."""

from __future__ import annotations

import asyncio


def reraise_lost_cancellation() -> None:
    """Raise CancelledError if the current task was cancelled but the cancellation never arrived.

    On Python 3.11, `asyncio.wait_for` drops a cancellation that lands as its inner awaitable completes
    (gh-86296); libraries built on it (asyncua, aiosmtplib, pymodbus) then return normally to a task that
    is marked as cancelling but will never see the error, and the task runs on: a shutdown that waits for
    it waits forever. Call this after awaiting such a library, at the top of a loop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
