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


class Deadline:
    """`asyncio.timeout` for a task that runs one bounded step after another (a device's polls), without a
    timer of its own for each step.

    `asyncio.timeout` makes a timer per `async with` (a handle in the loop's heap, cancelled at the end):
    at a thousand polls a second that is a thousand handles pushed into and taken out of a heap of several
    thousand, each comparison a Python call. Here one timer serves every step: it is armed when a step starts
    and finds none armed (or one due later), and when it fires it re-arms itself for the current step's end
    if that is later still, so steps shorter than their bound, one after the other, keep a single timer going
    about once per bound. A step past its end has its task cancelled, as `asyncio.timeout` does:

        deadline.start(loop.time() + seconds)
        try:
            await step()
        except asyncio.CancelledError:
            if not deadline.stop():
                raise          # a cancellation from elsewhere
            ...                # the step ran past its end
        else:
            deadline.stop()

    `stop` says whether the cancellation was this deadline's alone (and takes it back from the task's count,
    `Task.uncancel`), so an outside cancellation that lands at the same time still ends the task. A step that
    swallowed the cancellation returns normally; `stop` takes it back all the same.
    """

    __slots__ = ("_armed", "_cancelling", "_end", "_expired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._end: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0  # the task's pending cancellations when the step started
        self._expired = False

    def start(self, end: float) -> None:
        """A step of the current task starts, to end by `end` (the loop's clock)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._end is not None:
            raise RuntimeError("Deadline.start: a step is running (one step at a time)")
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        self._end = end
        self._expired = False
        handle = self._handle
        if handle is None or end < self._armed:
            if handle is not None:
                handle.cancel()
            self._armed = end
            self._handle = loop.call_at(end, self._fire)

    def stop(self) -> bool:
        """The step is over. True when this deadline cancelled its task (taken back: `uncancel`) and no other
        cancellation is pending on it: the step ran out of time."""
        self._end = None
        task, self._task = self._task, None
        if not self._expired:
            return False
        self._expired = False
        assert task is not None
        return task.uncancel() <= self._cancelling

    def close(self) -> None:
        """No more steps: the timer goes."""
        self._end = None
        self._task = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        end = self._end
        if end is None or self._loop is None:
            return  # between steps: idle until the next one starts
        if end > self._armed:
            self._armed = end
            self._handle = self._loop.call_at(end, self._fire)
            return
        task = self._task
        if task is not None and not task.done():
            self._expired = True
            task.cancel()
