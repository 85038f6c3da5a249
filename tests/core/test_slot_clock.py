"""`dcim.core.aio.SlotClock` and the pollers' clocks: tasks that sleep until times in one slot are woken by
one timer, in one turn of the event loop, never before their time; a cancelled sleeper leaves the others be.
Against the real event loop; no assertion depends on how long anything took."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from dcim.app.poller import POLL_SLOT_SECONDS, poll_clock
from dcim.core.aio import SlotClock


class Turns:
    """Counts the event loop's turns: a callback that schedules itself again runs once a turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_sleepers_of_one_slot_wake_together_on_one_timer_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    timers: list[Any] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    turns = Turns()
    try:
        clock = SlotClock(1.0)
        slot: list[int] = []
        woke: list[tuple[float, float, int]] = []

        async def sleeper(i: int) -> None:
            # The slot is picked by the first sleeper to run, all of them in one turn of the loop, a second
            # or more ahead: however slow the machine, no sleeper finds it past already.
            if not slot:
                slot.append(math.ceil(loop.time() + 1.0))
            when = slot[0] - 0.99 + i * 0.009  # all 100 inside that slot
            await clock.sleep_until(when)
            woke.append((when, loop.time(), turns.count))

        await asyncio.gather(*(sleeper(i) for i in range(100)))
    finally:
        turns.stop()
        loop.call_at = call_at  # type: ignore[method-assign]
    assert len(timers) == 1, timers  # one timer for the slot
    assert len({turn for _, _, turn in woke}) == 1, "woken in more than one turn of the loop"
    assert all(at >= when - 1e-6 for when, at, _ in woke)  # never before the time asked


async def test_a_time_already_past_returns_at_once_and_a_cancelled_sleeper_leaves_the_others_be() -> None:
    loop = asyncio.get_running_loop()
    clock = SlotClock(0.01)
    await asyncio.wait_for(clock.sleep_until(loop.time() - 1.0), 1.0)  # no timer needed

    # An hour ahead, so that nothing fires by itself however slow the machine: the slot is woken by hand.
    when = loop.time() + 3600
    first = asyncio.create_task(clock.sleep_until(when))
    second = asyncio.create_task(clock.sleep_until(when))
    await asyncio.sleep(0)
    (index,) = clock._due
    assert len(clock._due[index]) == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    clock._wake(index)  # what its timer does
    await asyncio.wait_for(second, 5.0)
    assert not clock._due  # the slot is gone once it has fired


def test_a_slot_is_positive() -> None:
    with pytest.raises(ValueError, match="slot must be positive"):
        SlotClock(0.0)


async def test_the_pollers_share_one_clock_per_slot_width_in_each_event_loop() -> None:
    one = poll_clock(1.0)
    assert poll_clock(5.0) is one and one.slot == POLL_SLOT_SECONDS  # slots of 10 ms for both
    fast = poll_clock(0.1)
    assert fast is not one and fast.slot == pytest.approx(0.005)  # 5 % of a 0.1 s interval

    def elsewhere() -> SlotClock:
        async def get() -> SlotClock:
            return poll_clock(1.0)
        return asyncio.run(get())

    other = await asyncio.get_running_loop().run_in_executor(None, elsewhere)
    assert other is not one  # another loop's timers are its own
