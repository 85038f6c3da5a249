"""OPC UA driver against the real asyncua simulator (security None): reads, writes, subscriptions, faults.

One simulator serves the whole module (an asyncua server takes a second or two to start); tests that
restart it or change its plant undo what they did. The restart test has its own simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from dcim.core.samples import Quality, Sample
from dcim.drivers.base import DriverContext, Subscriber
from dcim.drivers.errors import WriteRejected
from dcim.drivers.opcua.driver import OpcUaDriver, OpcUaSubscriber, make_driver
from dcim.drivers.profiles import load_profile
from dcim.simulators.plant import Plant
from tests.helpers import free_port, wait_until
from tests.opcua.fixtures import Collector, Running, chiller, hall, simulator

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROFILE = load_profile("generic-chiller")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[Running]:
    config = hall(free_port())
    plant = Plant(config, frozen=True)
    async with simulator(plant, chiller(config)) as running:
        yield running


def driver_for(sim: Running, **settings: object) -> OpcUaSubscriber:
    config = hall(int(sim.device.endpoint.rsplit(":", 1)[1]), **settings)
    driver = make_driver(chiller(config), PROFILE, DriverContext())
    assert isinstance(driver, Subscriber) and isinstance(driver, OpcUaSubscriber)
    return driver


@pytest_asyncio.fixture(loop_scope="module")
async def driver(sim: Running) -> AsyncIterator[OpcUaDriver]:
    drv = driver_for(sim)
    yield drv
    await drv.close()


class Subscription:
    """A running `subscribe()` task and what it emitted."""

    def __init__(self, driver: OpcUaSubscriber) -> None:
        self.got = Collector()
        self.task = asyncio.create_task(driver.subscribe(self.got.emit, self.got.status))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def value(self, point: str, predicate: object) -> object:
        def check() -> object:
            latest = self.got.latest(point)
            return latest is not None and latest.quality is Quality.GOOD and predicate(latest.value)  # type: ignore[operator]

        await wait_until(check, timeout=10, message=f"{point} never matched")
        latest = self.got.latest(point)
        assert latest is not None
        return latest.value


async def test_every_profile_point_equals_the_plant(sim: Running, driver: OpcUaDriver) -> None:
    samples = await driver.read()
    served = sim.plant.values(sim.device.id)
    assert {s.point for s in samples} == {p.name for p in PROFILE.points}
    for sample in samples:
        assert sample.quality is Quality.GOOD, sample
        assert sample.measurement == "chiller"
        assert sample.value == served[sample.point], sample.point


async def test_eurange_and_engineering_units_come_from_the_server(driver: OpcUaDriver) -> None:
    await driver.connect()
    assert driver.metadata["setpoint_c"] == ((5.0, 30.0), "°C")
    assert driver.metadata["demand_limit_pct"] == ((20.0, 100.0), "%")
    assert driver.metadata["running"] == (None, "")


async def test_a_setpoint_write_reaches_the_server_and_shows_in_the_next_sample(
    sim: Running, driver: OpcUaDriver
) -> None:
    state = sim.plant.chillers[sim.device.id]
    try:
        await driver.write("setpoint_c", 16.5)
        assert state.setpoint_c == 16.5
        after = {s.point: s.value for s in await driver.read()}
        assert after["setpoint_c"] == 16.5
        await driver.write("demand_limit_pct", 80)
        assert state.demand_limit_pct == 80.0
        await driver.write("running", False)
        after = {s.point: s.value for s in await driver.read()}
        assert after["running"] is False and after["status"] == "stopped"
    finally:
        state.setpoint_c, state.demand_limit_pct, state.running = 18.0, 100.0, True


@pytest.mark.parametrize(
    ("point", "value", "why"),
    [
        ("setpoint_c", 45.0, "outside the allowed range"),
        ("setpoint_c", 17.55, "not a multiple of the step"),
        ("setpoint_c", "cold", "not a number"),
        ("demand_limit_pct", 5, "outside the allowed range"),
        ("leaving_temp_c", 10.0, "read-only"),
        ("status", "running", "read-only"),
        ("running", 2, "not a boolean"),
        ("no_such_point", 1, "has no point"),
    ],
)
async def test_a_bad_write_is_refused_before_anything_is_sent(
    sim: Running, driver: OpcUaDriver, point: str, value: object, why: str
) -> None:
    await driver.connect()
    writes_before = sim.server.writes
    with pytest.raises(WriteRejected, match=why):
        await driver.write(point, value)  # type: ignore[arg-type]
    assert sim.server.writes == writes_before
    assert sim.plant.chillers[sim.device.id].setpoint_c == 18.0


async def test_subscription_delivers_a_change_within_a_publishing_interval(sim: Running) -> None:
    drv = driver_for(sim, publishing_interval="100ms")
    sub = Subscription(drv)
    state = sim.plant.chillers[sim.device.id]
    try:
        await wait_until(lambda: sub.got.statuses == [(True, "")], timeout=15)
        assert await sub.value("leaving_temp_c", lambda v: v == 18.0) == 18.0
        state.leaving_c = 19.25
        # The change arrives through the subscription alone (no read is made); the latency figure is in
        # bench/opcua.md, not asserted here, so a loaded machine cannot fail the test.
        assert await sub.value("leaving_temp_c", lambda v: v == 19.25) == 19.25
    finally:
        state.leaving_c = 18.0
        await sub.stop()
        await drv.close()


async def test_changes_at_different_times_in_one_publish_keep_their_own_times(sim: Running) -> None:
    # A long publishing interval: two changes half a second apart usually arrive in one publish. A batch is
    # stored as one line at one time, so each must go out in a batch of its own time (a chiller that trips
    # after its last temperature change was once stored as tripped at that earlier moment).
    drv = driver_for(sim, publishing_interval="5s")
    sub = Subscription(drv)
    state = sim.plant.chillers[sim.device.id]
    try:
        await sub.value("condenser_entering_temp_c", lambda v: v == 28.0)
        await sub.value("leaving_temp_c", lambda v: v == 18.0)
        state.condenser_entering_c = 29.5
        await wait_until(lambda: sim.server.nodes["condenser_entering_temp_c"].last == 29.5, timeout=60)
        await asyncio.sleep(0.5)
        state.leaving_c = 18.75
        first = await sub.value("condenser_entering_temp_c", lambda v: v == 29.5)
        second = await sub.value("leaving_temp_c", lambda v: v == 18.75)
        assert (first, second) == (29.5, 18.75)
        for batch in sub.got.batches:
            assert len({s.ts_ns for s in batch}) == 1, batch
        # When each change was first heard of (the heartbeat repeats both later, at one time).
        changed: dict[str, int] = {}
        for sample in sub.got.samples:
            if (sample.point, sample.value) in {("condenser_entering_temp_c", 29.5), ("leaving_temp_c", 18.75)}:
                changed.setdefault(sample.point, sample.ts_ns)
        assert changed["leaving_temp_c"] > changed["condenser_entering_temp_c"]
    finally:
        state.condenser_entering_c, state.leaving_c = 28.0, 18.0
        await sub.stop()
        await drv.close()


@pytest.mark.parametrize("deadband", [{"type": "absolute", "value": 0.5}, {"type": "percent", "value": 1.0}])
async def test_a_deadband_suppresses_small_changes(sim: Running, deadband: dict[str, object]) -> None:
    # Percent of the EURange (-10..60 degC for a condenser temperature): 1 % is 0.7 K.
    drv = driver_for(sim, deadband=deadband)
    sub = Subscription(drv)
    state = sim.plant.chillers[sim.device.id]
    try:
        await sub.value("condenser_entering_temp_c", lambda v: v == 28.0)
        state.condenser_entering_c = 28.3  # below either deadband
        await wait_until(lambda: sim.server.nodes["condenser_entering_temp_c"].last == 28.3, timeout=60)
        state.condenser_entering_c = 30.0
        await sub.value("condenser_entering_temp_c", lambda v: v == 30.0)
        seen = [s.value for s in sub.got.samples if s.point == "condenser_entering_temp_c"]
        assert 28.3 not in seen and seen[-1] == 30.0
    finally:
        state.condenser_entering_c = 28.0
        await sub.stop()
        await drv.close()


async def test_without_deadband_every_change_arrives(sim: Running) -> None:
    drv = driver_for(sim)
    sub = Subscription(drv)
    state = sim.plant.chillers[sim.device.id]
    try:
        await sub.value("condenser_entering_temp_c", lambda v: v == 28.0)
        state.condenser_entering_c = 28.3
        await sub.value("condenser_entering_temp_c", lambda v: v == 28.3)
    finally:
        state.condenser_entering_c = 28.0
        await sub.stop()
        await drv.close()


async def test_a_bad_node_is_a_bad_sample_with_the_status_name(sim: Running, driver: OpcUaDriver) -> None:
    sub = Subscription(driver_for(sim))
    await wait_until(lambda: sub.got.statuses == [(True, "")], timeout=15)
    sim.plant.inject(sim.device.id, "bad_node", point="entering_temp_c", status="BadSensorFailure")
    try:
        def bad() -> Sample | None:
            latest = sub.got.latest("entering_temp_c")
            return latest if latest is not None and latest.quality is Quality.BAD else None

        sample = await wait_until(bad, timeout=10)
        assert sample is not None and sample.value is None and sample.reason == "BadSensorFailure"
        polled = {s.point: s for s in await driver.read()}
        assert polled["entering_temp_c"].quality is Quality.BAD
        assert polled["entering_temp_c"].reason == "BadSensorFailure"
        assert polled["leaving_temp_c"].quality is Quality.GOOD
    finally:
        sim.plant.clear(sim.device.id, "bad_node")
    await sub.value("entering_temp_c", lambda v: v is not None)
    await sub.stop()


async def test_an_uncertain_value_is_stale_with_the_status_name(sim: Running, driver: OpcUaDriver) -> None:
    sim.plant.inject(sim.device.id, "bad_node", point="cooling_kw", status="UncertainLastUsableValue")
    try:
        def uncertain() -> Sample | None:
            sample = next(s for s in polled if s.point == "cooling_kw")
            return sample if sample.quality is Quality.STALE else None

        polled: list[Sample] = []

        async def poll() -> Sample | None:
            polled[:] = await driver.read()
            return uncertain()

        sample = await wait_until(poll, timeout=10)
        assert sample is not None and sample.reason == "UncertainLastUsableValue"
        assert sample.value == sim.plant.values(sim.device.id)["cooling_kw"]
    finally:
        sim.plant.clear(sim.device.id, "bad_node")


async def test_a_trip_shows_in_status_alarm_and_running(sim: Running) -> None:
    sub = Subscription(driver_for(sim))
    state = sim.plant.chillers[sim.device.id]
    sim.plant.inject(sim.device.id, "trip")
    try:
        assert await sub.value("status", lambda v: v == "tripped") == "tripped"
        assert await sub.value("alarm", lambda v: v is True) is True
        assert await sub.value("running", lambda v: v is False) is False
        assert await sub.value("cop", lambda v: v == 0.0) == 0.0
    finally:
        sim.plant.clear(sim.device.id)
        state.tripped, state.running = False, True
        await sub.stop()


async def test_unreachable_server_is_reported_offline_with_bad_samples() -> None:
    config = hall(free_port())
    drv = make_driver(chiller(config), PROFILE, DriverContext())
    assert isinstance(drv, OpcUaSubscriber)
    got = Collector()
    task = asyncio.create_task(drv.subscribe(got.emit, got.status))
    try:
        await wait_until(lambda: got.statuses and len(got.batches) >= 2, timeout=10)
        assert got.statuses[0][0] is False and "connect to opc.tcp://127.0.0.1" in got.statuses[0][1]
        assert len(got.statuses) == 1  # offline is reported once, not on every retry
        first = got.batches[0]
        assert {s.point for s in first} == {p.name for p in PROFILE.points}
        assert all(s.quality is Quality.BAD and s.value is None for s in first)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drv.close()
