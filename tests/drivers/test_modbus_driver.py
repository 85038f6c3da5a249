"""The Modbus driver against the real simulator over TCP (pymodbus server on free loopback ports)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import Config, parse_config
from dcim.core.samples import Quality, Sample
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import DeviceTimeout, DeviceUnreachable, WriteRejected
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.driver import ModbusDriver, make_driver
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import Profile, load_profile
from dcim.simulators.modbus import ModbusSimulator
from dcim.simulators.plant import Plant
from tests.helpers import free_port, wait_until


def hall(devices: list[dict[str, Any]], profile_dirs: list[str] | None = None) -> Config:
    """One liquid-cooled rack per CDU, every CDU simulated on loopback."""
    full = [{"kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "profile": "generic-cdu",
             "timeout": 0.3, "retries": 1, "simulate": True, **d} for d in devices]
    racks = [{"id": f"R{i}", "cooling": "liquid", "power_budget_kw": 150, "cdu": d["id"]}
             for i, d in enumerate(full)]
    return parse_config({
        "site": {"id": "test"},
        "rooms": [{"id": "room", "rows": [{"id": "A", "racks": racks}]}],
        "devices": full,
        "profile_dirs": profile_dirs or [],
    })


def modbus(config: Config) -> list[ModbusDevice]:
    return [d for d in config.devices if isinstance(d, ModbusDevice)]


@contextlib.asynccontextmanager
async def simulating(plant: Plant, devices: list[ModbusDevice],
                     profile_dirs: tuple[Path, ...] = ()) -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator(plant, devices, profile_dirs=profile_dirs)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@contextlib.asynccontextmanager
async def driving(device: ModbusDevice, profile: Profile[Any] | None = None,
                  context: DriverContext | None = None,
                  profile_dirs: tuple[Path, ...] = ()) -> AsyncIterator[ModbusDriver]:
    driver = make_driver(device, profile or load_profile(device.profile, profile_dirs), context or DriverContext())
    try:
        yield driver
    finally:
        await driver.close()


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {s.point: s for s in samples}


def expected_value(point: Point, value: Any) -> Any:
    """What the profile can carry of a plant value: the value after encoding and decoding."""
    if point.is_bit_table or point.bit is not None:
        return bool(value)
    return codec.decode(point, codec.encode(point, value))


def assert_matches_plant(profile: Profile[Any], samples: list[Sample], values: dict[str, Any]) -> None:
    got = by_name(samples)
    served = {p.name for p in profile.points if values.get(p.name) is not None}
    # Points the plant has no value for are served as their `missing` marker and omitted by the driver.
    assert set(got) == served
    for point in profile.points:
        if point.name not in served:
            continue
        sample = got[point.name]
        assert sample.quality is Quality.GOOD, (point.name, sample.reason)
        assert sample.measurement == "cdu"
        assert sample.value == expected_value(point, values[point.name]), point.name
        if isinstance(sample.value, float) and point.type in ("int16", "uint16", "int32", "uint32"):
            # ...and that is the plant's value to within half a register step.
            assert math.isclose(sample.value, values[point.name], abs_tol=abs(point.scale) / 2 + 1e-9)


@pytest.mark.parametrize("profile_name", ["generic-cdu", "ocp-orv3-rpu"])
async def test_every_point_equals_the_plant_value(profile_name: str) -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "profile": profile_name}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]) as simulator, driving(device) as driver:
        await driver.connect()
        samples = await driver.read()
        profile = load_profile(profile_name)
        assert_matches_plant(profile, samples, plant.values("cdu-1"))
        # The coalesced plan costs 3 requests for either profile, and that is what reached the server.
        assert len(driver.plan) == 3
        assert sum(simulator.requests.values()) == 3
        await driver.read()
        assert sum(simulator.requests.values()) == 6


@pytest.mark.parametrize("profile_name", ["generic-cdu", "ocp-orv3-rpu"])
async def test_a_poll_read_whole_is_laid_out_as_its_plan_says(profile_name: str) -> None:
    # A poll whose every point is GOOD with a value is marked with the plan's layout (`Layout`), the same
    # object every time, and its samples are exactly the layout's points in order; the batch the poller makes
    # of it carries it. The RPU's absent pumps are served as their `missing` marker (no sample): not laid out.
    from dcim.app.poller import DeviceCoordinator
    from dcim.core.pipeline import Pipeline
    from dcim.drivers.modbus import driver as driver_module

    config = hall([{"id": "cdu-1", "port": free_port(), "profile": profile_name}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]) as simulator, driving(device) as driver:
        coordinator = DeviceCoordinator(device, driver, Pipeline())
        batches = [await coordinator.poll_once() for _ in range(2)]
        await simulator.stop()
        failed = await coordinator.poll_once()
    if profile_name == "ocp-orv3-rpu":
        assert all(b.layout is None for b in batches)
        return
    layout = batches[0].layout
    assert layout is not None and batches[1].layout is layout
    assert not layout.texts  # a CDU's values are not all float32s with their digits: encoded the general way
    assert layout is driver_module.compiled(load_profile(profile_name), device.max_gap, device.max_registers)[3]
    for batch in batches:
        assert [(s.point, s.measurement, s.tags, s.quality) for s in batch.samples] == \
            [(p, m, (), Quality.GOOD) for p, m in zip(layout.points, layout.measurements, strict=True)]
        assert all(s.value is not None for s in batch.samples)
    assert failed.samples and all(s.quality is Quality.BAD for s in failed.samples)
    assert failed.layout is None and driver.last_layout is None


async def test_rpu_absent_pumps_are_omitted_not_zero() -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "profile": "ocp-orv3-rpu"}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]), driving(device) as driver:
        got = by_name(await driver.read())
    assert {"pump1_rpm", "pump2_rpm"} <= set(got)
    assert "pump3_rpm" not in got and "pump4_rpm" not in got


def types_profile(directory: Path, byte_order: str, word_order: str) -> str:
    """Every data type, with scale, offset, flags, an enum, coils and discrete inputs, in one byte/word
    order, over plant values the CDU already has."""
    name = f"types-{byte_order}-{word_order}"
    points = [
        {"name": "facility_supply_temp_c", "table": "input", "address": 0, "type": "int16", "scale": 0.01},
        {"name": "facility_return_temp_c", "table": "input", "address": 1, "type": "uint16",
         "scale": 0.1, "offset": -50},
        {"name": "supply_temp_c", "table": "input", "address": 2, "type": "int32", "scale": 0.001},
        {"name": "return_temp_c", "table": "input", "address": 4, "type": "uint32", "scale": 0.01,
         "offset": -100},
        {"name": "flow_lpm", "table": "input", "address": 6, "type": "float32"},
        {"name": "heat_removed_kw", "table": "input", "address": 8, "type": "float64"},
        {"name": "power_w", "table": "input", "address": 12, "type": "int64"},
        {"name": "pump1_rpm", "table": "input", "address": 16, "type": "uint64"},
        {"name": "supply_pressure_kpa", "table": "input", "address": 20, "type": "float32",
         "scale": 0.5, "offset": 1},
        {"name": "pump_fault", "table": "input", "address": 22, "type": "uint32", "bit": 17},
        {"name": "pump1_running", "table": "input", "address": 22, "type": "uint32", "bit": 2},
        {"name": "reservoir_level", "table": "input", "address": 24, "type": "uint16",
         "enum": {1: "ok", 2: "low", 3: "empty"}},
        {"name": "leak_zone2", "table": "coil", "address": 3, "type": "bool"},
        {"name": "auto_flow_control", "table": "coil", "address": 0, "type": "bool", "writable": True},
        {"name": "pump2_running", "table": "discrete", "address": 5, "type": "bool"},
        {"name": "supply_temp_setpoint_c", "table": "holding", "address": 0, "type": "float32",
         "writable": {"min": 18, "max": 45}},
        {"name": "flow_setpoint_lpm", "table": "holding", "address": 2, "type": "uint32", "scale": 0.1,
         "writable": {"min": 20, "max": 2000}},
    ]
    profile = {"name": name, "kind": "cdu", "protocol": "modbus",
               "defaults": {"byte_order": byte_order, "word_order": word_order}, "points": points}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    return name


@pytest.mark.parametrize(("byte_order", "word_order"),
                         [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")])
async def test_every_type_and_order_over_tcp(tmp_path: Path, byte_order: str, word_order: str) -> None:
    name = types_profile(tmp_path, byte_order, word_order)
    config = hall([{"id": "cdu-1", "port": free_port(), "profile": name}], profile_dirs=[str(tmp_path)])
    plant = Plant(config, frozen=True)
    plant.inject("cdu-1", "pump_failure", pump=1)  # pump_fault true, pump1 stopped: flags both ways
    plant.inject("cdu-1", "leak", zone=2)  # zone 2 wet, reservoir low: shows at once, even frozen
    device, dirs = modbus(config)[0], (tmp_path,)
    async with simulating(plant, [device], dirs), driving(device, profile_dirs=dirs) as driver:
        profile = load_profile(name, dirs)
        values = plant.values("cdu-1")
        assert values["pump_fault"] is True and values["pump1_running"] is False
        assert values["leak_zone2"] is True and values["reservoir_level"] == "low"
        samples = await driver.read()
        assert_matches_plant(profile, samples, values)
        # Every type, flags and coils among them, read whole: laid out as the plan says.
        assert driver.last_layout is not None
        assert [s.point for s in samples] == list(driver.last_layout.points)
        # Writes through every order: a float32 and a scaled uint32 reach the plant exactly.
        await driver.write("supply_temp_setpoint_c", 29.5)
        await driver.write("flow_setpoint_lpm", 512.3)
        assert plant.cdus["cdu-1"].supply_setpoint_c == 29.5
        assert plant.cdus["cdu-1"].flow_setpoint_lpm == pytest.approx(512.3)
        await driver.write("auto_flow_control", False)  # a coil: function 5
        assert plant.cdus["cdu-1"].auto_flow_control is False
        got = by_name(await driver.read())
        assert got["supply_temp_setpoint_c"].value == 29.5
        assert got["flow_setpoint_lpm"].value == 512.3
        assert got["auto_flow_control"].value is False and got["leak_zone2"].value is True


@pytest.mark.parametrize(
    ("profile_name", "point", "value", "state"),
    [
        ("generic-cdu", "supply_temp_setpoint_c", 30.5, lambda c: c.supply_setpoint_c),
        ("generic-cdu", "flow_setpoint_lpm", 480, lambda c: c.flow_setpoint_lpm),
        ("ocp-orv3-rpu", "supply_temp_setpoint_c", 27.3, lambda c: c.supply_setpoint_c),
        ("ocp-orv3-rpu", "flow_setpoint_lpm", 431.7, lambda c: c.flow_setpoint_lpm),
        ("ocp-orv3-rpu", "auto_flow_control", False, lambda c: c.auto_flow_control),
    ],
)
async def test_a_write_reaches_the_plant_and_the_next_read(
    profile_name: str, point: str, value: Any, state: Any
) -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "profile": profile_name}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]), driving(device) as driver:
        before = by_name(await driver.read())
        await driver.write(point, value)
        assert state(plant.cdus["cdu-1"]) == pytest.approx(value)
        after = by_name(await driver.read())
        assert after[point].value == pytest.approx(value)
        # Nothing else moved (a flag write rewrites its word: the other flags must survive it).
        assert {k: s.value for k, s in after.items() if k != point} == \
            {k: s.value for k, s in before.items() if k != point}


async def test_a_flag_write_keeps_the_other_flags_of_its_word(tmp_path: Path) -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "profile": "ocp-orv3-rpu"}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]), driving(device) as driver:
        await driver.write("auto_flow_control", False)
        await driver.write("auto_flow_control", True)
        assert plant.cdus["cdu-1"].auto_flow_control is True
        assert by_name(await driver.read())["auto_flow_control"].value is True


@pytest.mark.parametrize(
    ("point", "value", "match"),
    [
        ("supply_temp_setpoint_c", 60.0, "outside the allowed range"),
        ("supply_temp_setpoint_c", 17.9, "outside the allowed range"),
        ("supply_temp_setpoint_c", 30.05, "not a multiple of the step"),
        ("supply_temp_setpoint_c", "warm", "not a number"),
        ("flow_setpoint_lpm", math.nan, "outside the allowed range"),
        ("supply_temp_c", 30.0, "read-only"),
        ("leak", True, "read-only"),
        ("no_such_point", 1, "has no point"),
    ],
)
async def test_a_refused_write_sends_nothing(point: str, value: Any, match: str) -> None:
    config = hall([{"id": "cdu-1", "port": free_port()}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]) as simulator, driving(device) as driver:
        await driver.connect()
        with pytest.raises(WriteRejected, match=match):
            await driver.write(point, value)
        assert sum(simulator.requests.values()) == 0
        assert plant.cdus["cdu-1"].supply_setpoint_c == 32.0


async def test_a_value_the_register_cannot_hold_is_refused_before_sending(tmp_path: Path) -> None:
    # The profile allows up to 10000 L/min, but a uint16 in tenths holds at most 6553.5.
    profile = {"name": "narrow", "kind": "cdu", "protocol": "modbus", "points": [
        {"name": "flow_setpoint_lpm", "table": "holding", "address": 101, "type": "uint16", "scale": 0.1,
         "writable": {"min": 0, "max": 10000}}]}
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(profile))
    config = hall([{"id": "cdu-1", "port": free_port()}])
    plant = Plant(config, frozen=True)
    device, dirs = modbus(config)[0], (tmp_path,)
    async with simulating(plant, [device]) as simulator, \
            driving(device, load_profile("narrow", dirs)) as driver:
        with pytest.raises(WriteRejected, match="outside what a uint16"):
            await driver.write("flow_setpoint_lpm", 7000)
        assert simulator.writes("cdu-1") == 0


async def test_an_exception_code_marks_that_read_bad_and_keeps_the_rest(tmp_path: Path) -> None:
    # The driver's profile has one more point than the device serves: its read gets "illegal address".
    served = load_profile("generic-cdu")
    extra = Point.model_validate({"name": "extra_temp_c", "table": "input", "address": 300, "type": "int16"})
    profile = served.model_copy(update={"points": [*served.points, extra]})
    config = hall([{"id": "cdu-1", "port": free_port()}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with simulating(plant, [device]), driving(device, profile) as driver:
        assert len(driver.plan) == 4
        got = by_name(await driver.read())
        assert driver.last_layout is None  # a read refused: not the plan's layout
    bad = got["extra_temp_c"]
    assert bad.quality is Quality.BAD and bad.value is None
    assert "exception 2 (illegal data address)" in bad.reason
    assert_matches_plant(served, [s for s in got.values() if s.point != "extra_temp_c"], plant.values("cdu-1"))


async def test_a_silent_unit_times_out_while_another_port_keeps_answering() -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "timeout": 0.3, "retries": 1},
                   {"id": "cdu-2", "port": free_port(), "timeout": 0.3, "retries": 1}])
    plant = Plant(config, frozen=True)
    one, two = modbus(config)
    context = DriverContext()
    async with simulating(plant, [one, two]) as simulator, \
            driving(one, context=context) as silent, driving(two, context=context) as healthy:
        await silent.read()
        plant.inject("cdu-1", "no_response")
        finished: list[str] = []

        async def poll(driver: ModbusDriver) -> list[Sample]:
            try:
                return await driver.read()
            finally:
                finished.append(driver.device.id)

        silent_task = asyncio.create_task(poll(silent))
        healthy_samples = await poll(healthy)
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.3 s"):
            await silent_task
        # Counts and order, not wall-clock: the healthy unit answered first, and the silent one's read was
        # tried exactly twice (retries=1, each ended by the timeout; the dropped count below), no more.
        assert finished == ["cdu-2", "cdu-1"]
        assert_matches_plant(healthy.profile, healthy_samples, plant.values("cdu-2"))
        assert simulator.addresses[(one.host, one.port)][0].dropped == 2
        plant.clear("cdu-1")
        assert len(await silent.read()) == len(healthy_samples)


async def test_units_behind_one_address_share_one_connection() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 1, "max_in_flight": 2},
                   {"id": "cdu-2", "port": port, "unit_id": 7}])
    plant = Plant(config, frozen=True)
    plant.write("cdu-2", "supply_temp_setpoint_c", 28.0)  # so the two units serve different values
    one, two = modbus(config)
    context = DriverContext()
    async with simulating(plant, [one, two]) as simulator, \
            driving(one, context=context) as first, driving(two, context=context) as second:
        results = await asyncio.gather(first.read(), second.read(), first.read(), second.read())
        assert first.connection is second.connection
        assert len(context.shared) == 1
        assert simulator.connections() == 1
        assert by_name(results[0])["supply_temp_setpoint_c"].value == 32.0
        assert by_name(results[1])["supply_temp_setpoint_c"].value == 28.0
        assert_matches_plant(second.profile, results[3], plant.values("cdu-2"))
        await first.close()
        assert len(context.shared) == 1  # cdu-2 still uses it
        assert (await second.read())
    assert context.shared == {}


async def test_the_driver_reconnects_when_the_server_comes_back() -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "timeout": 0.3, "retries": 0}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with driving(device) as driver:
        async with simulating(plant, [device]):
            assert await driver.read()
        with pytest.raises((DeviceUnreachable, DeviceTimeout)):
            await driver.read()
        # While backing off, reads fail at once rather than queue.
        with pytest.raises(DeviceUnreachable):
            await driver.read()
        async with simulating(plant, [device]):
            async def back() -> list[Sample] | None:
                try:
                    return await driver.read()
                except (DeviceUnreachable, DeviceTimeout):
                    return None

            samples = await wait_until(back, timeout=20, interval=0.05)
        assert_matches_plant(driver.profile, samples, plant.values("cdu-1"))


async def test_an_unreachable_port_raises_unreachable_fast() -> None:
    config = hall([{"id": "cdu-1", "port": free_port(), "timeout": 0.5}])
    async with driving(modbus(config)[0]) as driver:
        with pytest.raises(DeviceUnreachable, match="cannot connect"):
            await driver.connect()


async def test_an_outage_reports_a_stable_error() -> None:
    """The poller logs an outage once and again only when the error text changes: keep it stable."""
    config = hall([{"id": "cdu-1", "port": free_port(), "timeout": 0.3, "retries": 0}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    async with driving(device) as driver:
        async with simulating(plant, [device]):
            assert await driver.read()

        async def error() -> str:
            try:
                await driver.read()
            except (DeviceUnreachable, DeviceTimeout) as err:
                return str(err)
            return ""

        first = await error()
        assert first
        refused = await wait_until(lambda: _refused(error), timeout=10, interval=0.05)
        later = [await error() for _ in range(5)]
        assert set(later) == {refused}


async def _refused(error: Any) -> str:
    text: str = await error()
    return text if text.startswith("cannot connect") else ""


async def test_a_cancellation_the_library_swallows_is_raised_again() -> None:
    """pymodbus' asyncio.wait_for (Python 3.11) can drop a cancellation that arrives with the answer;
    a poller task must still stop. The call below swallows it the same way, deterministically."""
    config = hall([{"id": "cdu-1", "port": free_port()}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    entered = asyncio.Event()

    async def swallowing(client: Any) -> Any:
        answer = await client.read_holding_registers(100, count=2, device_id=1)
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return answer  # what wait_for does when the awaited future is already done
        return answer

    async with simulating(plant, [device]), driving(device) as driver:
        task = asyncio.create_task(driver.connection.request("swallow", swallowing, timeout=10, retries=0))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_gateway_reporting_its_unit_silent_means_the_device_is_offline() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 1, "retries": 2},
                   {"id": "cdu-2", "port": port, "unit_id": 2}])
    plant = Plant(config, frozen=True)
    one, two = modbus(config)
    context = DriverContext()
    async with simulating(plant, [one, two]) as simulator, \
            driving(one, context=context) as silent, driving(two, context=context) as healthy:
        plant.inject("cdu-1", "no_response", gateway=True)
        with pytest.raises(DeviceTimeout, match=r"exception 11 \(gateway target device failed to respond\)"):
            await silent.read()
        assert simulator.addresses[("127.0.0.1", port)][0].dropped == 3  # retried twice, then given up
        assert await healthy.read()


async def test_devices_of_one_profile_share_its_compiled_plan_and_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read plan and decode plans are made once per profile (and plan options), not once a device: every
    device of the profile reads its own values through them, and names itself in its errors."""
    from dcim.drivers.modbus import driver as driver_module

    config = hall([{"id": f"cdu-{i}", "port": free_port()} for i in (1, 2, 3)]
                  + [{"id": "cdu-4", "port": free_port(), "max_registers": 4}])
    devices = modbus(config)
    plant = Plant(config, frozen=True)
    profile = load_profile("generic-cdu")
    context = DriverContext()
    drivers = [make_driver(d, profile, context) for d in devices]
    first, *same, other = drivers
    assert all(d.plan is first.plan and d._decoders is first._decoders for d in same)
    assert other.plan is not first.plan and len(other.plan) > len(first.plan)  # its own options, its own plan
    assert [r[0].split(":")[0] for r in first._requests] == ["cdu-1"] * len(first.plan)
    async with simulating(plant, devices):
        try:
            for device, driver in zip(devices, drivers, strict=True):
                await driver.connect()
                assert_matches_plant(profile, await driver.read(), plant.values(device.id))
        finally:
            for driver in drivers:
                await driver.close()
    # Bounded: profiles are few, and the table is cleared if it ever holds more.
    monkeypatch.setattr(driver_module._COMPILED, "limit", 3)
    for gap in range(10):
        driver_module.compiled(profile, gap, 125)
        assert len(driver_module._COMPILED) <= 3


async def test_a_pollers_polls_ask_asyncio_for_neither_the_loop_nor_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # `asyncio.get_running_loop()` and `asyncio.current_task()` make a system call (getpid) each time on
    # Python 3.11: five a poll, about 1 % of the daemon's CPU at 1,000 devices. The poll loop has both and
    # hands them on (the device's deadline timer keeps the loop), so once a device is connected its polls
    # ask for neither. Counted here for the daemon's own code; the simulator in this process asks as it likes.
    from dcim.app.poller import DeviceCoordinator
    from dcim.core.pipeline import Pipeline
    from tests.e2e.harness import Recorder

    config = hall([{"id": "cdu-1", "port": free_port(), "interval": 0.05}])
    plant = Plant(config, frozen=True)
    device = modbus(config)[0]
    asked: list[str] = []

    def counted(original: Any) -> Any:
        def ask(*args: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("dcim.") and not caller.startswith("dcim.simulators"):
                asked.append(f"{original.__name__} from {caller}")
            return original(*args)
        return ask

    pipeline = Pipeline()
    recorder = Recorder()
    pipeline.add_sink(recorder)
    async with simulating(plant, [device]):
        coordinator = DeviceCoordinator(device, make_driver(device, load_profile(device.profile), DriverContext()),
                                        pipeline)
        task = asyncio.create_task(coordinator.run())
        try:
            await wait_until(lambda: len(recorder.batches.get("cdu-1", [])) >= 2, timeout=10)
            monkeypatch.setattr(asyncio, "get_running_loop", counted(asyncio.get_running_loop))
            monkeypatch.setattr(asyncio, "current_task", counted(asyncio.current_task))
            before = len(recorder.batches["cdu-1"])
            await wait_until(lambda: len(recorder.batches["cdu-1"]) >= before + 5, timeout=10)
            monkeypatch.undo()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert coordinator.online is True
    assert all(s.quality is Quality.GOOD for batch in recorder.batches["cdu-1"][before:] for s in batch.samples)
    assert asked == []
