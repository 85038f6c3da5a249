"""`dcim.core.aio.Deadline`: a poll's deadline as `asyncio.timeout` gives it, with one timer for a task's
steps one after the other. Against the real event loop: a step past its end is cancelled and reported as
out of time, an outside cancellation still ends the task (also one landing with the deadline's), a step
that swallows the cancellation is taken back from the task's count, and steps within their bound never
cancel anything and keep one timer between them. No assertion depends on how long anything took beyond
the bound's own order of magnitude (a step sleeps 100 times its bound, or a hundredth of it)."""

from __future__ import annotations

import asyncio
import math

import pytest

from dcim.core.aio import TIMER_SLOT, Deadline, RearmingTimer, _Wheel


async def _step(deadline: Deadline, seconds: float, bound: float, *, swallow: bool = False) -> str:
    loop = asyncio.get_running_loop()
    deadline.start(loop.time() + bound)
    expired = False
    try:
        try:
            if swallow:
                try:
                    await asyncio.sleep(seconds)
                except asyncio.CancelledError:
                    pass  # a library that loses the cancellation
            else:
                await asyncio.sleep(seconds)
        finally:
            expired = deadline.stop()
    except asyncio.CancelledError:
        if not expired:
            raise
        return "expired"
    return "expired after all" if expired else "done"


async def test_a_step_past_its_end_is_cancelled_and_the_task_goes_on() -> None:
    deadline = Deadline()
    assert await _step(deadline, 5.0, 0.05) == "expired"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # taken back: the task is not left cancelling
    # The next steps run normally, on the same deadline.
    assert await _step(deadline, 0.0, 5.0) == "done"
    assert await _step(deadline, 5.0, 0.05) == "expired"
    deadline.close()


async def test_steps_within_their_bound_share_one_timer_and_are_never_cancelled() -> None:
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    for _ in range(200):
        assert await _step(deadline, 0.0, 5.0) == "done"
    # One armed timer for the 200 steps (asyncio.timeout leaves a cancelled handle in the heap for each).
    assert len(loop._scheduled) - timers_before == 1  # type: ignore[attr-defined]
    deadline.close()
    assert await _step(Deadline(), 0.001, 5.0) == "done"


async def test_an_outside_cancellation_still_ends_the_task() -> None:
    deadline = Deadline()
    task = asyncio.create_task(_step(deadline, 5.0, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancellation_with_the_deadlines_own_is_not_swallowed() -> None:
    deadline = Deadline()
    said: list[bool] = []

    async def step_then_cancelled_from_outside() -> None:
        loop = asyncio.get_running_loop()
        deadline.start(loop.time() + 0.01)
        try:
            await asyncio.sleep(5.0)
        except asyncio.CancelledError:
            pass
        # The deadline fired (its cancellation taken by the sleep) and another one is now pending on the task.
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        said.append(deadline.stop())

    task = asyncio.create_task(step_then_cancelled_from_outside())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert said == [False]  # not "out of time": the task's own cancellation stands, and ended it


async def test_a_swallowed_cancellation_is_taken_back() -> None:
    deadline = Deadline()
    assert await _step(deadline, 5.0, 0.05, swallow=True) == "expired after all"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_one_step_at_a_time() -> None:
    deadline = Deadline()
    deadline.start(asyncio.get_running_loop().time() + 5.0)
    with pytest.raises(RuntimeError, match="one step at a time"):
        deadline.start(asyncio.get_running_loop().time() + 5.0)
    assert deadline.stop() is False
    deadline.close()


class _Recorder(RearmingTimer):
    """A timer that notes the loop's clock when its deadline is met (`due`), and fails if told to."""

    __slots__ = ("fail", "met")

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.met: list[float] = []
        self.fail = fail

    def due(self) -> None:
        self.met.append(asyncio.get_running_loop().time())
        if self.fail:
            raise RuntimeError("a due() that fails")


async def test_timers_of_one_slot_share_one_loop_timer_and_each_is_met_once_within_a_slot() -> None:
    # A thousand deadlines in the same slot: one handle in the loop's heap; each timer's `due` once, not
    # before its deadline; a failing one does not keep the others from theirs.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    end = (math.ceil(loop.time() / TIMER_SLOT) + 5) * TIMER_SLOT - TIMER_SLOT / 2
    timers = [_Recorder(fail=i == 3) for i in range(1000)]
    for timer in timers:
        timer.arm(end)
    assert len(loop._scheduled) - before == 1  # type: ignore[attr-defined]
    # A sleep that is a timer of its own, after the slot's in the loop's heap however late this line runs
    # (a delay of 0 or less only yields once, and the task could look before the slot is run).
    await asyncio.sleep(max(end - loop.time(), 0.0) + 20 * TIMER_SLOT)
    assert all(len(t.met) == 1 for t in timers)
    assert all(end <= t.met[0] for t in timers)
    assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)


async def test_a_deadline_moved_earlier_is_met_then_and_one_moved_later_only_when_reached() -> None:
    loop = asyncio.get_running_loop()
    earlier, later, closed, disarmed = _Recorder(), _Recorder(), _Recorder(), _Recorder()
    now = loop.time()
    earlier.arm(now + 0.25)
    earlier.arm(now + 0.05)  # an earlier slot: met at 0.05; the slot at 0.25 passes it by
    later.arm(now + 0.05)
    later.arm(now + 0.3)  # moved on: its first slot passes it by
    closed.arm(now + 0.05)
    closed.close()
    disarmed.arm(now + 0.05)
    disarmed.disarm()
    # (Timers run in the order of their times, so the slot at 0.05 comes before this sleep ends, however
    # late the loop runs; what else came meanwhile depends on the load, and is not asked here.)
    await asyncio.sleep(0.2)
    assert len(earlier.met) == 1 and now + 0.05 <= earlier.met[0]
    assert closed.met == [] and disarmed.met == []
    earlier.arm(now + 0.45)  # the next deadline, while the slot it left at 0.25 may still be to come
    await asyncio.sleep(0.5)
    assert len(later.met) == 1 and now + 0.3 <= later.met[0]
    assert len(earlier.met) == 2 and now + 0.45 <= earlier.met[1]
    assert closed.met == [] and disarmed.met == []


async def test_a_deadline_just_past_a_slots_end_is_met_in_the_next_slot() -> None:
    # A deadline one float above a slot's end (k * TIMER_SLOT) whose quotient by the slot rounds down onto k
    # (0.030000000000000002 / 0.01 is 3.0): it goes into slot k + 1. In slot k it would be looked at before
    # its deadline, put back into slot k, and so on, never met. Such deadlines can lie thousands of seconds
    # apart on the loop's clock (its value is the host's uptime), too far to wait for: these are taken near
    # the clock's zero, so their slots are already past, and the loop runs them at once, as it runs a slot
    # whose time has come. Nothing here waits on the clock.
    loop = asyncio.get_running_loop()
    wheel = _Wheel(loop)  # a wheel of their own, not the loop's: its slots near zero concern no other test
    timers: list[_Recorder] = []
    assert loop.time() > 1.0  # the host's uptime: every slot below has passed
    for k in range(1, 100):
        when = math.nextafter(k * TIMER_SLOT, math.inf)
        if math.ceil(when / TIMER_SLOT) * TIMER_SLOT < when:
            timer = _Recorder()
            timer._wheel = wheel
            timer.arm(when)
            assert timer._armed == k + 1
            timers.append(timer)
    assert len(timers) > 10
    try:
        for _ in range(20):  # each turn of the loop runs the slots due (and, were one put back, it again)
            await asyncio.sleep(0)
        assert all(len(timer.met) == 1 for timer in timers)
    finally:
        for timer in timers:
            timer.close()  # a slot that kept coming back stops at its next look


def test_a_deadline_goes_into_the_first_slot_that_ends_at_it_or_after() -> None:
    # Across the clock's range (a host up for minutes to years) and the fractions of a slot, on a loop of
    # its own that only collects the slots' timers and is never run.
    loop = asyncio.new_event_loop()
    try:
        wheel = _Wheel(loop)
        timer = RearmingTimer(loop)
        for magnitude in (0.0, 1.0, 1e3, 1e5, 1e7, 1e9):
            for k in range(0, 1000, 7):
                for offset in (0.0, 1e-9, 0.25, 0.5, 0.999999):
                    base = magnitude + (k + offset) * TIMER_SLOT
                    for when in (math.nextafter(base, -math.inf), base, math.nextafter(base, math.inf)):
                        index = wheel.add(timer, when)
                        assert (index - 1) * TIMER_SLOT < when <= index * TIMER_SLOT, (when, index)
                        wheel.slots.clear()
    finally:
        loop.close()
