"""The pipeline's admission: backpressure from the outboxes to the pollers, first come first served."""

from __future__ import annotations

import asyncio

from dcim.core.pipeline import Admission
from tests.helpers import wait_until


class Backlog:
    def __init__(self) -> None:
        self.depth = 0
        self.departed = 0

    def leave(self, count: int) -> None:
        self.depth -= count
        self.departed += count


async def test_without_backlogs_or_below_the_mark_polls_pass_at_once() -> None:
    admission = Admission()
    await admission.acquire()
    backlog = Backlog()
    admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=10)
    backlog.depth = 9
    await admission.acquire()
    assert admission.held == 0


async def test_over_the_mark_polls_wait_and_pass_in_order_as_the_backlog_drains() -> None:
    admission = Admission(check_every=0.001, stall_after=3600)
    backlog = Backlog()
    admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=4)
    backlog.depth = 10
    passed: list[int] = []

    async def poll(n: int) -> None:
        await admission.acquire()
        passed.append(n)
        backlog.depth += 1  # its batch, in the outbox

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(poll(n)))
        await wait_until(lambda n=n: admission.waiting == n + 1)  # type: ignore[misc]
    assert passed == []
    backlog.leave(2)  # 8, still above the mark: half of what left passes (-> 9)
    await wait_until(lambda: len(passed) == 1)
    backlog.leave(6)  # 3, one below the mark: one passes (-> 4), then nothing while nothing leaves
    await wait_until(lambda: len(passed) == 2)
    assert admission.waiting == 4
    backlog.leave(2)  # 2: two pass (-> 4)
    await wait_until(lambda: len(passed) == 4)
    backlog.leave(4)  # 0: the rest
    await wait_until(lambda: len(passed) == 6)
    assert passed == [0, 1, 2, 3, 4, 5]
    assert admission.held == 6 and admission.waiting == 0
    await asyncio.gather(*tasks)


async def test_a_stalled_backlog_holds_nothing_back_until_it_moves_again() -> None:
    admission = Admission(check_every=0.001, stall_after=0.01)
    backlog = Backlog()
    admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=4)
    backlog.depth = 100  # a broker outage: nothing leaves
    await admission.acquire()  # waits for stall_after, then passes: the outbox buffers the outage
    assert admission.summary()["backlogs"]["box"]["stalled"] is True
    await admission.acquire()
    assert admission.held == 1
    backlog.leave(1)  # the broker is back: backpressure again
    assert admission.congested()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = Admission(check_every=0.001, stall_after=3600)
    backlog = Backlog()
    admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=1)
    backlog.depth = 5
    task = asyncio.create_task(admission.acquire())
    await wait_until(lambda: admission.waiting == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert admission.waiting == 0
