"""Past saturation: three times the load the slowest hop sustains, for (at least) 60 s.

Simulated CDUs over real Modbus TCP, polled by the daemon's coordinators through the pipeline into a sink
that takes one batch every `3 x interval / N` seconds and no faster: the devices offer three times what it
takes, whatever the machine's speed (a slower machine only makes the sink slower still). The sink's queue
is a backlog of the pipeline's admission, as the MQTT and ingest outboxes are in the daemon.

What must hold by design, not by speed:
- the queue stays bounded: at most its high-water mark plus one batch per device (the polls admitted
  while it was below the mark), and memory with it;
- every device is polled, in turn: between two polls of one device, each other device is polled at most
  about once (here: at most 2 x (N - 1) polls of others), so at three times the load each device gets a
  poll per round of the sink, about every three intervals, and none starves;
- the late polls are counted as overruns, per device.

Nothing here compares a duration: the run lasts until the sink has taken 60 s worth of batches at its
designed pace, which takes at least 60 s.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest

from dcim.app.config import Config, load_config
from dcim.app.poller import (
    LAG_TARGET_MAX,
    LAG_TARGET_MIN,
    LOOP_LAG,
    OVERRUNS,
    DeviceCoordinator,
    lag_target,
    make_driver,
    polling_summary,
    watch_loop_lag,
)
from dcim.core.pipeline import Admission, Pipeline
from dcim.core.samples import Batch, DeviceStatus
from dcim.drivers.base import DriverContext
from dcim.drivers.profiles import load_profile
from dcim.simulators.plant import Plant
from tests.e2e.harness import cdu_hall, simulators
from tests.helpers import wait_until

DEVICES = 12
INTERVAL = 0.5
LOAD = 3  # offered / what the sink takes
HIGH = 4  # the sink's high-water mark, in batches
SECONDS = 60
RSS_GROWTH_MIB = 32


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class SlowSink:
    """Takes one batch per `pace` seconds from its queue, never faster; records the order of arrival."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.queue: collections.deque[Batch] = collections.deque()
        self.taken = 0
        self.deepest = 0
        self.order: list[str] = []
        self.progress = asyncio.Event()

    def on_batch(self, batch: Batch) -> None:
        self.order.append(batch.device)
        self.queue.append(batch)
        self.deepest = max(self.deepest, len(self.queue))

    def on_status(self, status: DeviceStatus) -> None:
        pass

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.pace)
            if self.queue:
                self.queue.popleft()
                self.taken += 1
                self.progress.set()


def hall(tmp_path: Path) -> Config:
    return load_config(cdu_hall(tmp_path, cdus=DEVICES, interval=f"{int(INTERVAL * 1000)}ms"))


async def test_three_times_the_sustainable_load_stretches_intervals_evenly_within_bounded_memory(
        tmp_path: Path) -> None:
    config = hall(tmp_path)
    plant = Plant(config, frozen=True)
    pipeline = Pipeline()
    sink = SlowSink(pace=LOAD * INTERVAL / DEVICES)
    pipeline.add_sink(sink)
    pipeline.admission.add_backlog("slow-sink", lambda: len(sink.queue), lambda: sink.taken, high=HIGH)
    context = DriverContext()
    coordinators = [DeviceCoordinator(d, make_driver(d, load_profile(d.profile), context), pipeline)
                    for d in config.devices]
    overruns_before = {c.device.id: OVERRUNS.get(device=c.device.id) for c in coordinators}
    async with simulators(config, plant):
        tasks = [asyncio.create_task(sink.run(), name="slow-sink")]
        tasks += [asyncio.create_task(c.run(), name=c.name) for c in coordinators]
        try:
            # Warm-up: a tenth of the run, then memory is measured from there.
            target = int(SECONDS / sink.pace)
            while sink.taken < target // 10:
                sink.progress.clear()
                await sink.progress.wait()
            rss_start = rss_mib()
            deepest_before = sink.deepest
            while sink.taken < target:
                sink.progress.clear()
                await sink.progress.wait()
                assert all(not t.done() for t in tasks), [t for t in tasks if t.done()]
            rss_end = rss_mib()
            summary = polling_summary(coordinators, pipeline)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # Bounded: the mark, plus at most one batch from each poll admitted while the queue was below it.
    assert sink.deepest <= HIGH + DEVICES, (sink.deepest, deepest_before)
    assert rss_end - rss_start < RSS_GROWTH_MIB, (rss_start, rss_end)

    # Every device polled, in turn: between two polls of one device, at most about one poll of each other.
    order = sink.order[len(sink.order) // 10:]  # after the warm-up
    last: dict[str, int] = {}
    widest: dict[str, int] = {}
    for position, device in enumerate(order):
        if device in last:
            widest[device] = max(widest.get(device, 0), position - last[device] - 1)
        last[device] = position
    assert set(widest) == {c.device.id for c in coordinators}, "a device was not polled twice after warm-up"
    assert max(widest.values()) <= 2 * (DEVICES - 1), widest
    counts = collections.Counter(order)
    assert max(counts.values()) - min(counts.values()) <= 3, counts

    # Late polls are counted, for every device, and summarized for /healthz.
    for c in coordinators:
        assert c.overruns > 0, c.device.id
        assert OVERRUNS.get(device=c.device.id) - overruns_before[c.device.id] == c.overruns
    assert summary["overruns_total"] == sum(c.overruns for c in coordinators)
    assert summary["devices_with_overruns"] == DEVICES
    assert summary["admission"]["backlogs"]["slow-sink"]["high"] == HIGH
    assert pipeline.admission.held > 0


async def test_the_loop_lag_gauge_shows_a_loop_that_ran_late() -> None:
    # A callback that holds the loop for 0.3 s makes the watcher's 0.05 s timer at least 0.25 s late: a lower
    # bound, which a busy machine only raises.
    watcher = asyncio.create_task(watch_loop_lag(0.05))
    try:
        await asyncio.sleep(0)  # the watcher is asleep on its timer
        time.sleep(0.3)  # noqa: ASYNC251 - holding the loop is the point
        await wait_until(lambda: LOOP_LAG.get() > 0.2, timeout=30, message="lag not seen")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_a_loop_that_runs_late_lowers_the_limit_on_polls_in_flight_until_it_runs_on_time() -> None:
    # Held for a second, the watcher's 0.01 s timer is at least 0.99 s late, far above the target of 0.2 s;
    # then the loop is idle, and a lag below 0.1 s (half the target) grows the limit back to the cap.
    admission = Admission(max_in_flight=1024, min_in_flight=64, lag_target=0.2)
    watcher = asyncio.create_task(watch_loop_lag(0.01, admission))
    try:
        await asyncio.sleep(0)  # the watcher is asleep on its timer
        time.sleep(1.0)  # noqa: ASYNC251 - holding the loop is the point
        await wait_until(lambda: (admission.in_flight_limit() or 1024) < 1024, timeout=30,
                         message="the limit did not shrink")
        await wait_until(lambda: admission.in_flight_limit() == 1024, timeout=60,
                         message="the limit did not grow back")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def test_the_lag_target_is_a_tenth_of_the_shortest_interval_within_its_bounds() -> None:
    assert lag_target([1.0, 0.5, 30.0]) == pytest.approx(0.05)
    assert lag_target([0.7]) == pytest.approx(0.07)
    assert lag_target([0.2, 1.0]) == LAG_TARGET_MIN == 0.04  # not below: a busy loop is that late now and then
    assert lag_target([1.0, 10.0]) == LAG_TARGET_MAX == 0.1
    assert lag_target([]) == LAG_TARGET_MAX  # no device yet (a cluster node before its shards)
