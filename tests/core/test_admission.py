"""The pipeline's admission: backpressure from the outboxes to the pollers, first come first served."""

from __future__ import annotations

import asyncio
import itertools

from dcim.core.pipeline import Admission, Pipeline
from dcim.core.samples import Batch, Sample
from tests.helpers import RecordingSink, wait_until


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


async def test_a_backlog_whose_hop_is_down_holds_nothing_back() -> None:
    admission = Admission(check_every=0.001, stall_after=3600)
    backlog = Backlog()
    up = False
    admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=4, alive=lambda: up)
    backlog.depth = 100
    await admission.acquire()
    assert admission.held == 0 and not admission.congested()
    up = True
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


def test_derived_batches_wait_for_the_deferrable_sinks_the_latest_per_subject() -> None:
    pipeline = Pipeline()
    rules, publisher = RecordingSink(), RecordingSink()
    pipeline.add_sink(rules)
    pipeline.add_sink(publisher, deferrable=True)
    backlog = Backlog()
    pipeline.admission.add_backlog("box", lambda: backlog.depth, lambda: backlog.departed, high=2)

    def rack(name: str, ts: int, kind: str = "rack") -> Batch:
        return Batch(name, kind, ts, [Sample(name, "power_kw", 1.0, ts, measurement="rack")])

    pipeline.publish_derived(rack("R1", 1))  # below the mark: at once, to both
    assert len(rules.batches) == len(publisher.batches) == 1
    backlog.depth = 2
    for ts in (2, 3):
        pipeline.publish_derived(rack("R1", ts))
        pipeline.publish_derived(rack("R2", ts))
    pipeline.publish_derived(rack("R1", 4, kind="alarm"))  # an event record is never held back
    assert [b.ts_ns for b in rules.batches] == [1, 2, 2, 3, 3, 4]  # the rules see every one, at once
    assert [(b.device, b.ts_ns) for b in publisher.batches] == [("R1", 1), ("R1", 4)]
    assert pipeline.superseded == 2
    backlog.leave(1)  # room for one: the oldest subject's latest batch
    pipeline.publish(rack("cdu-1", 5, kind="cdu"))
    assert [(b.device, b.ts_ns) for b in publisher.batches][-2:] == [("cdu-1", 5), ("R1", 3)]
    backlog.leave(1)
    pipeline.publish(rack("cdu-1", 6, kind="cdu"))
    assert [(b.device, b.ts_ns) for b in publisher.batches][-2:] == [("cdu-1", 6), ("R2", 3)]


async def test_polls_in_flight_are_bounded_in_order_and_offline_devices_have_a_pool_of_their_own() -> None:
    admission = Admission(max_in_flight=2, max_offline_in_flight=1)
    await admission.acquire()
    await admission.acquire()
    passed: list[str] = []

    async def poll(name: str, capped: bool = True) -> None:
        await admission.acquire(capped)
        passed.append(name)

    third = asyncio.create_task(poll("third"))
    await wait_until(lambda: admission.waiting == 1)
    fourth = asyncio.create_task(poll("fourth"))
    await wait_until(lambda: admission.waiting == 2)
    # Behind them in line, but its own pool has room: it goes on while they wait for theirs.
    offline = asyncio.create_task(poll("offline", capped=False))
    await wait_until(lambda: passed == ["offline"])
    assert admission.offline_in_flight == 1 and admission.waiting == 2
    second_offline = asyncio.create_task(poll("second offline", capped=False))  # its pool is full now
    await wait_until(lambda: admission.waiting == 3)
    admission.release()
    await wait_until(lambda: passed == ["offline", "third"])
    admission.release()
    await wait_until(lambda: passed == ["offline", "third", "fourth"])
    assert admission.in_flight == 2 and admission.waiting == 1
    admission.release(capped=False)
    await wait_until(lambda: passed == ["offline", "third", "fourth", "second offline"])
    assert admission.in_flight == 2 and admission.offline_in_flight == 1
    await asyncio.gather(third, fourth, offline, second_offline)


def test_the_limit_on_polls_in_flight_follows_the_event_loop_lag() -> None:
    admission = Admission(max_in_flight=1024, min_in_flight=64, lag_target=0.05)
    admission.follow_lag(0.0)
    assert admission.in_flight_limit() == 1024  # a loop on time keeps the whole cap
    # A loop that runs late: the limit shrinks with every sample, down to its floor and no further.
    limits = [admission.in_flight_limit()]
    for _ in range(100):
        admission.follow_lag(1.0)
        limits.append(admission.in_flight_limit())
    shrinking = limits[: limits.index(64) + 1]
    assert len(shrinking) > 2 and all(b < a for a, b in itertools.pairwise(shrinking))  # type: ignore[operator]
    assert set(limits[len(shrinking):]) == {64}
    # On time again for a few samples, then a lag between half the target and the target once the smoothing
    # has settled there: the limit holds where it got to.
    for _ in range(15):
        admission.follow_lag(0.0)
    for _ in range(50):
        admission.follow_lag(0.04)
    assert 0.025 < admission.lag <= 0.05
    settled = admission.in_flight_limit()
    assert settled is not None and 64 < settled < 1024
    for _ in range(20):
        admission.follow_lag(0.04)
        assert admission.in_flight_limit() == settled
    # On time again: it grows back with every sample once the smoothed lag is below half the target, up
    # to the cap and no further.
    limits = [settled]
    for _ in range(200):
        admission.follow_lag(0.0)
        limits.append(admission.in_flight_limit())
    first = next(i for i, limit in enumerate(limits) if limit != settled) - 1
    growing = limits[first: limits.index(1024) + 1]
    assert len(growing) > 2 and all(b > a for a, b in itertools.pairwise(growing))  # type: ignore[operator]
    assert set(limits[first + len(growing):]) == {1024}
    assert admission.summary()["in_flight_limit"] == 1024


def test_without_a_lag_target_or_a_cap_the_lag_limits_nothing() -> None:
    capped = Admission(max_in_flight=10)
    uncapped = Admission(lag_target=0.05)
    for _ in range(50):
        capped.follow_lag(5.0)
        uncapped.follow_lag(5.0)
    assert capped.in_flight_limit() == 10
    assert uncapped.in_flight_limit() is None


def test_a_floor_above_the_cap_keeps_the_cap() -> None:
    admission = Admission(max_in_flight=8, min_in_flight=64, lag_target=0.05)
    for _ in range(50):
        admission.follow_lag(5.0)
    assert admission.in_flight_limit() == 8


async def test_polls_waiting_for_the_limit_go_on_as_soon_as_it_grows() -> None:
    # No timer check here (an hour apart): only the lag's sample can let them through.
    admission = Admission(check_every=3600, max_in_flight=4, min_in_flight=1, lag_target=0.05)
    for _ in range(50):
        admission.follow_lag(1.0)
    assert admission.in_flight_limit() == 1
    await admission.acquire()
    passed: list[int] = []

    async def poll(number: int) -> None:
        await admission.acquire()
        passed.append(number)

    polls = [asyncio.create_task(poll(n)) for n in range(3)]
    await wait_until(lambda: admission.waiting == 3)
    while admission.in_flight_limit() != 4:
        admission.follow_lag(0.0)
    await wait_until(lambda: passed == [0, 1, 2])
    assert admission.in_flight == 4
    await asyncio.gather(*polls)
