"""asyncio helpers the standard library lacks."""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any


def reraise_lost_cancellation(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if the current task (`task`: it, found once by a caller that loops) was
    cancelled but the cancellation never arrived.

    On Python 3.11, `asyncio.wait_for` drops a cancellation that lands as its inner awaitable completes
    (gh-86296); libraries built on it (asyncua, aiosmtplib, pymodbus) then return normally to a task that
    is marked as cancelling but will never see the error, and the task runs on: a shutdown that waits for
    it waits forever. Call this after awaiting such a library, at the top of a loop.
    """
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# Deadlines are looked at in slots of this many seconds (one event loop timer a slot in use, however many
# deadlines fall in it, `_Wheel`): a deadline is met up to a slot late.
TIMER_SLOT = 0.01


class _Wheel:
    """The slots of one event loop's `RearmingTimer`s: slot `i` ends at `i * TIMER_SLOT` on the loop's clock
    and holds the timers to look at then. A thousand devices' poll deadlines, each pushed into the loop's
    heap and popped from it once a poll (about ten comparisons in a heap of a thousand, each a Python
    call), become a list append each and a timer a slot."""

    __slots__ = ("loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: `_WHEELS` keeps a wheel while its loop lives, and a reference back would keep both for good.
        self.loop = weakref.ref(loop)
        self.slots: dict[int, list[RearmingTimer]] = {}

    def add(self, timer: RearmingTimer, when: float) -> int:
        """`timer` looked at in the slot that ends at `when` or next after it; that slot's index."""
        index = math.ceil(when / TIMER_SLOT)
        if index * TIMER_SLOT < when:
            # The quotient rounded down onto a whole number: the slot must end at `when` or after, or the
            # timer, looked at before its deadline, would go back into the same slot again and again.
            index += 1
        elif (index - 1) * TIMER_SLOT >= when:
            index -= 1  # rounded up past one (0.07 / 0.01 is 7.000000000000001): the slot before ends at `when`
        members = self.slots.get(index)
        if members is None:
            loop = self.loop()
            if loop is None:
                raise RuntimeError("the event loop of these timers is gone")
            members = self.slots[index] = []
            loop.call_at(index * TIMER_SLOT, self._due, index)
        members.append(timer)
        return index

    def _due(self, index: int) -> None:
        for timer in self.slots.pop(index, ()):
            try:
                timer._look(index)
            except Exception as err:  # one timer's failure must not keep the slot's others from theirs
                loop = self.loop()
                if loop is not None:
                    loop.call_exception_handler({"message": "deadline timer failed", "exception": err})


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()


class RearmingTimer:
    """One timer for a run of deadlines that mostly move later (a device's polls, one after the other).

    `arm(when)` sets the current deadline. The timer is put in a slot of the loop's `_Wheel` only when it is
    in none or the new deadline falls before its slot; when the slot comes and finds the deadline moved on,
    it goes into the deadline's slot, and when the deadline is reached it calls `due()` (at most a slot,
    `TIMER_SLOT`, after it). `disarm()` leaves no deadline and keeps the timer, which is looked at once more
    with nothing to do and rests; `close()` drops it. So deadlines that follow each other cost a list append
    each, not a handle pushed into the event loop's heap and cancelled (every comparison in that heap is a
    Python call)."""

    __slots__ = ("_armed", "_loop", "_wheel", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._wheel: _Wheel | None = None
        self._armed: int | None = None  # the index of the slot the timer is in (None: in none)
        self.when: float | None = None  # the current deadline (the loop's clock), None between them

    def arm(self, when: float) -> None:
        self.when = when
        armed = self._armed
        if armed is None or when <= (armed - 1) * TIMER_SLOT:
            # In no slot, or the deadline falls in an earlier one: the slot it is in passes it by (`_look`).
            wheel = self._wheel
            if wheel is None:
                loop = self._loop
                if loop is None:
                    loop = self._loop = asyncio.get_running_loop()
                wheel = _WHEELS.get(loop)
                if wheel is None:
                    wheel = _WHEELS[loop] = _Wheel(loop)
                self._wheel = wheel
            self._armed = wheel.add(self, when)

    def disarm(self) -> None:
        self.when = None

    def close(self) -> None:
        self.when = None
        self._armed = None

    def due(self) -> None:
        """The deadline is reached (subclasses act here)."""

    def _look(self, index: int) -> None:
        if index != self._armed:
            return  # a slot the timer left for an earlier one, or closed since
        self._armed = None
        when = self.when
        if when is None or self._wheel is None:
            return  # between deadlines: idle until the next one
        if when > index * TIMER_SLOT:
            self._armed = self._wheel.add(self, when)
            return
        self.due()


class Deadline(RearmingTimer):
    """`asyncio.timeout` for a task that runs one bounded step after another (a device's polls), without a
    timer of its own for each step.

    `asyncio.timeout` makes a timer per `async with` (a handle in the loop's heap, cancelled at the end):
    at a thousand polls a second that is a thousand handles pushed into and taken out of a heap of several
    thousand. Here one timer serves every step (`RearmingTimer`). A step past its end has its task
    cancelled, as `asyncio.timeout` does:

        deadline.start(loop.time() + seconds)
        expired = False
        try:
            try:
                await step()
            finally:
                expired = deadline.stop()
        except asyncio.CancelledError:
            if not expired:
                raise          # a cancellation from elsewhere
            ...                # the step ran past its end

    `stop` says whether the cancellation was this deadline's alone (and takes it back from the task's count,
    `Task.uncancel`), so an outside cancellation that lands at the same time still ends the task. A step that
    swallowed the cancellation returns normally; `stop` takes it back all the same.
    """

    __slots__ = ("_cancelling", "_expired", "_task")

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0  # the task's pending cancellations when the step started
        self._expired = False

    def start(self, end: float, task: asyncio.Task[Any] | None = None) -> None:
        """A step of the current task starts, to end by `end` (the loop's clock). `task`: the current task,
        when the caller has it (`asyncio.current_task()` makes a system call, getpid, each time)."""
        if self.when is not None:
            raise RuntimeError("Deadline.start: a step is running (one step at a time)")
        if task is None:
            task = asyncio.current_task()
        self._task = task
        self._cancelling = task.cancelling() if task is not None else 0
        self._expired = False
        self.arm(end)

    def stop(self) -> bool:
        """The step is over. True when this deadline cancelled its task (taken back: `uncancel`) and no other
        cancellation is pending on it: the step ran out of time."""
        self.disarm()
        task, self._task = self._task, None
        if not self._expired:
            return False
        self._expired = False
        assert task is not None
        return task.uncancel() <= self._cancelling

    def close(self) -> None:
        """No more steps: the timer goes."""
        self._task = None
        super().close()

    def due(self) -> None:
        task = self._task
        if task is not None and not task.done():
            self._expired = True
            task.cancel()


class SlotClock:
    """`asyncio.sleep` until a time, for many tasks that wake about together (the pollers): the times are
    rounded up to slots of `slot` seconds, and one timer wakes every task due in a slot.

    A thousand devices each asleep on a timer of its own keep a thousand handles in the event loop's heap,
    each pushed and popped once a poll (every comparison in that heap a Python call), and wake one or two to
    a turn of the loop. Here a slot is one handle, however many sleep until it, and its tasks wake in the
    same turn: their requests go out together and their answers come back together, to fewer turns of the
    loop. The cost is a wake-up up to one slot later than asked."""

    __slots__ = ("_due", "slot")

    def __init__(self, slot: float) -> None:
        if not slot > 0:
            raise ValueError(f"slot must be positive, not {slot}")
        self.slot = slot
        self._due: dict[int, list[asyncio.Future[None]]] = {}

    async def sleep_until(self, when: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Until the loop's clock reaches `when`, rounded up to the slot; at once when that is past. `loop`:
        the running loop, when the caller has it (`asyncio.get_running_loop()` makes a system call, getpid,
        each time)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        index = math.ceil(when / self.slot)
        if index * self.slot <= loop.time():
            return
        waiters = self._due.get(index)
        if waiters is None:
            waiters = self._due[index] = []
            loop.call_at(index * self.slot, self._wake, index)
        waiter: asyncio.Future[None] = loop.create_future()
        waiters.append(waiter)
        await waiter  # cancelled: the future is cancelled with the task, and the wake-up passes it by

    def _wake(self, index: int) -> None:
        for waiter in self._due.pop(index, ()):
            if not waiter.done():
                waiter.set_result(None)
