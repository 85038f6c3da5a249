"""The chiller's OPC UA server restarts, or goes away, mid-run: the driver notices, reports offline, keeps
the gap visible with STALE samples, reconnects by itself, re-resolves the namespace (the restarted server
numbers it differently) and re-creates its subscription, without anyone restarting the driver."""

from __future__ import annotations

import asyncio

import pytest

from dcim.core.samples import Quality
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import DeviceUnreachable
from dcim.drivers.opcua.driver import OpcUaSubscriber, make_driver
from dcim.drivers.profiles import load_profile
from dcim.simulators.plant import Plant
from tests.helpers import free_port, wait_until
from tests.opcua.fixtures import BlackHoleProxy, Collector, chiller, hall, simulator

PROFILE = load_profile("generic-chiller")


async def test_server_restart_mid_run_resumes_samples_after_a_visible_gap() -> None:
    config = hall(free_port())
    plant = Plant(config, frozen=True)
    device = chiller(config)
    state = plant.chillers[device.id]
    async with simulator(plant, device) as sim:
        driver = make_driver(device, PROFILE, DriverContext())
        assert isinstance(driver, OpcUaSubscriber)
        got = Collector()
        task = asyncio.create_task(driver.subscribe(got.emit, got.status))
        try:
            await wait_until(lambda: got.statuses == [(True, "")], timeout=15)
            await wait_until(lambda: got.latest("leaving_temp_c"), timeout=5)
            index_before = driver._resolved[0].node_id.NamespaceIndex  # type: ignore[union-attr]

            plant.inject(device.id, "restart", down=0.5)
            await wait_until(lambda: len(got.statuses) >= 2, timeout=15)
            online, error = got.statuses[1]
            assert online is False and error
            gap_start = len(got.batches)
            # While the server is away its last values keep coming, marked STALE with the reason.
            stale = await wait_until(
                lambda: [s for s in got.samples if s.point == "leaving_temp_c" and s.quality is Quality.STALE],
                timeout=5,
            )
            assert stale[0].value == 18.0 and stale[0].reason == error

            state.leaving_c = 17.5  # changes while the server restarts
            await wait_until(lambda: len(got.statuses) >= 3, timeout=30)
            assert got.statuses[2] == (True, "")
            await wait_until(
                lambda: (s := got.latest("leaving_temp_c")) and s.quality is Quality.GOOD and s.value == 17.5,
                timeout=10,
            )
            assert sim.server.generation == 1
            index_after = driver._resolved[0].node_id.NamespaceIndex  # type: ignore[union-attr]
            assert index_after == index_before + 1  # the simulator shifted it: we resolved the URI again

            gap = [s for batch in got.batches[gap_start:] for s in batch]
            assert {s.point for s in gap if s.quality is Quality.STALE} == {p.name for p in PROFILE.points}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await driver.close()


async def test_server_gone_until_cleared_then_back() -> None:
    config = hall(free_port())
    plant = Plant(config, frozen=True)
    device = chiller(config)
    async with simulator(plant, device) as sim:
        driver = make_driver(device, PROFILE, DriverContext())
        assert isinstance(driver, OpcUaSubscriber)
        got = Collector()
        task = asyncio.create_task(driver.subscribe(got.emit, got.status))
        try:
            await wait_until(lambda: got.statuses == [(True, "")], timeout=15)
            plant.inject(device.id, "no_response")
            await wait_until(lambda: len(got.statuses) == 2, timeout=10)
            # Offline once, however many reconnect attempts fail meanwhile.
            await wait_until(lambda: sum(1 for b in got.batches if b[0].quality is Quality.STALE) >= 3, timeout=10)
            assert len(got.statuses) == 2 and not sim.server.running.is_set()
            with_polling = make_driver(device, PROFILE, DriverContext())
            try:
                with pytest.raises(DeviceUnreachable, match=r"connect to opc\.tcp://127\.0\.0\.1"):
                    await with_polling.read()
            finally:
                await with_polling.close()
            plant.clear(device.id, "no_response")
            await wait_until(lambda: len(got.statuses) == 3 and got.statuses[2] == (True, ""), timeout=30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await driver.close()


async def test_a_network_cut_is_detected_by_the_watchdog_and_survived() -> None:
    server_port = free_port()
    config = hall(server_port)
    plant = Plant(config, frozen=True)
    async with simulator(plant, chiller(config)):
        proxy = await BlackHoleProxy(server_port).start()
        # The driver talks through the proxy; the chiller never closes anything, the path just goes silent.
        device = chiller(hall(proxy.port, watchdog_interval="300ms"))
        driver = make_driver(device, PROFILE, DriverContext())
        assert isinstance(driver, OpcUaSubscriber)
        got = Collector()
        task = asyncio.create_task(driver.subscribe(got.emit, got.status))
        try:
            await wait_until(lambda: got.statuses == [(True, "")], timeout=15)
            proxy.cut()
            await wait_until(lambda: len(got.statuses) == 2, timeout=10)
            assert got.statuses[1][0] is False
            await wait_until(lambda: (s := got.latest("leaving_temp_c")) and s.quality is Quality.STALE, timeout=5)
            proxy.mend()
            await wait_until(lambda: len(got.statuses) == 3, timeout=30)
            assert got.statuses[2] == (True, "")
            plant.chillers[device.id].leaving_c = 16.0
            await wait_until(lambda: (s := got.latest("leaving_temp_c")) and s.value == 16.0, timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await driver.close()
            await proxy.stop()
