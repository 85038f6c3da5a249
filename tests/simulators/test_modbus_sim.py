"""The CDU simulator seen from a plain pymodbus client: what a third-party Modbus master would get."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from dcim.app.config import Config, parse_config
from dcim.drivers.modbus.config import ModbusDevice
from dcim.simulators.modbus import ModbusSimulator, serve
from dcim.simulators.plant import Plant
from tests.helpers import free_port, wait_until


def hall(devices: list[dict[str, Any]]) -> Config:
    full = [{"kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "profile": "generic-cdu",
             "simulate": True, **d} for d in devices]
    racks = [{"id": f"R{i}", "cooling": "liquid", "power_budget_kw": 150, "cdu": d["id"]}
             for i, d in enumerate(full)]
    return parse_config({"site": {"id": "test"},
                         "rooms": [{"id": "room", "rows": [{"id": "A", "racks": racks}]}],
                         "devices": full})


def modbus(config: Config) -> list[ModbusDevice]:
    return [d for d in config.devices if isinstance(d, ModbusDevice)]


@contextlib.asynccontextmanager
async def client(port: int, timeout: float = 1.0) -> AsyncIterator[AsyncModbusTcpClient]:  # noqa: ASYNC109
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0, reconnect_delay=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


@contextlib.asynccontextmanager
async def simulating(plant: Plant, devices: list[ModbusDevice]) -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator(plant, devices)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def test_a_gateway_serves_each_unit_from_its_own_profile() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 1},
                   {"id": "rpu-1", "port": port, "unit_id": 12, "profile": "ocp-orv3-rpu"}])
    plant = Plant(config, frozen=True)
    plant.write("cdu-1", "supply_temp_setpoint_c", 30.0)
    plant.write("rpu-1", "supply_temp_setpoint_c", 27.5)
    async with simulating(plant, modbus(config)), client(port) as c:
        generic = await c.read_holding_registers(100, count=2, device_id=1)
        rpu = await c.read_holding_registers(37888, count=2, device_id=12)
        assert generic.registers == [300, 225]      # tenths of degC; L/min (1.5 per kW of one rack)
        assert rpu.registers == [2250, 275]         # tenths of L/min, tenths of degC
        # Unit 1 has no register 37888; unit 12 has no input registers at all.
        missing = await c.read_holding_registers(37888, count=1, device_id=1)
        assert missing.isError() and missing.exception_code == 2
        no_inputs = await c.read_input_registers(0, count=1, device_id=12)
        assert no_inputs.isError() and no_inputs.exception_code == 2


async def test_gaps_between_points_read_zero_and_past_the_end_is_illegal() -> None:
    port = free_port()
    config = hall([{"id": "rpu-1", "port": port, "profile": "ocp-orv3-rpu"}])
    async with simulating(Plant(config, frozen=True), modbus(config)), client(port) as c:
        telemetry = await c.read_holding_registers(36864, count=14)
        assert telemetry.registers[6:9] == [0, 0, 0]   # 36870..36872 are not mapped: bridged as zero
        beyond = await c.read_holding_registers(37904, count=2)
        assert beyond.isError() and beyond.exception_code == 2


async def test_writes_are_checked_by_the_profile_and_the_plant() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port}])
    plant = Plant(config, frozen=True)
    async with simulating(plant, modbus(config)) as simulator, client(port) as c:
        ok = await c.write_register(100, 305)
        assert not ok.isError()
        assert plant.cdus["cdu-1"].supply_setpoint_c == 30.5
        too_hot = await c.write_register(100, 600)      # 60.0 degC: above the profile's 45.0
        assert too_hot.isError() and too_hot.exception_code == 3
        assert plant.cdus["cdu-1"].supply_setpoint_c == 30.5
        both = await c.write_registers(100, [290, 500])
        assert not both.isError()
        assert (plant.cdus["cdu-1"].supply_setpoint_c, plant.cdus["cdu-1"].flow_setpoint_lpm) == (29.0, 500.0)
        unmapped = await c.write_register(102, 1)
        assert unmapped.isError() and unmapped.exception_code == 2
        no_coils = await c.write_coil(0, True)
        assert no_coils.isError() and no_coils.exception_code == 2
        assert simulator.writes("cdu-1") == 5


async def test_a_read_only_flag_in_a_written_word_is_refused() -> None:
    port = free_port()
    config = hall([{"id": "rpu-1", "port": port, "profile": "ocp-orv3-rpu"}])
    plant = Plant(config, frozen=True)
    async with simulating(plant, modbus(config)), client(port) as c:
        flags = await c.read_holding_registers(37377, count=1)
        refused = await c.write_register(37377, flags.registers[0] | 1)   # reservoir alarm is read-only
        assert refused.isError() and refused.exception_code == 2
        control = await c.read_holding_registers(37904, count=1)
        assert control.registers == [0b1000]                              # auto flow control on
        assert not (await c.write_register(37904, 0)).isError()
        assert plant.cdus["rpu-1"].auto_flow_control is False


async def test_faults_show_in_the_served_registers() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port}])
    plant = Plant(config)
    async with simulating(plant, modbus(config)), client(port) as c:
        status = await c.read_input_registers(17, count=2)
        assert status.registers == [0b011, 0]                  # both pumps running, no fault, dry
        plant.inject("cdu-1", "pump_failure", pump=2)
        plant.inject("cdu-1", "leak", zone=3)
        plant.advance(1.0)
        status = await c.read_input_registers(17, count=2)
        assert status.registers == [0b101, 0b0100]             # pump 1 running, pump fault; zone 3 wet
        leak = await c.read_discrete_inputs(0, count=1)
        assert leak.bits[0] is True
        plant.inject("cdu-1", "stuck_sensor", point="supply_temp_c")
        stuck = (await c.read_input_registers(2, count=1)).registers
        plant.write("cdu-1", "supply_temp_setpoint_c", 20.0)
        for _ in range(20):
            plant.advance(5.0)
        assert (await c.read_input_registers(2, count=1)).registers == stuck


async def test_a_silent_unit_drops_requests_while_its_gateway_neighbour_answers() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 1}, {"id": "cdu-2", "port": port, "unit_id": 2}])
    plant = Plant(config, frozen=True)
    plant.inject("cdu-1", "no_response")
    async with simulating(plant, modbus(config)) as simulator, client(port, timeout=0.3) as c:
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=1, device_id=1)
        answered = await c.read_input_registers(0, count=1, device_id=2)
        assert not answered.isError()
        assert simulator.addresses[("127.0.0.1", port)][0].dropped == 1
        plant.clear("cdu-1", "no_response")
        assert not (await c.read_input_registers(0, count=1, device_id=1)).isError()


async def test_serve_until_cancelled_then_the_port_is_free() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port}, {"id": "cdu-2", "port": free_port()}])
    task = asyncio.create_task(serve(Plant(config), modbus(config)))

    async def answering() -> bool:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return True
        return False

    await wait_until(answering, timeout=60)
    async with client(port) as c:
        assert not (await c.read_input_registers(0, count=19)).isError()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # raises if the simulator still held the port
    assert not await answering()


def test_two_devices_cannot_claim_one_unit_id() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 3}, {"id": "cdu-2", "port": port, "unit_id": 3}])
    with pytest.raises(ValueError, match="unit id 3 is already served"):
        ModbusSimulator(Plant(config), modbus(config))


async def test_a_unit_id_nobody_uses_answers_device_failure() -> None:
    port = free_port()
    config = hall([{"id": "cdu-1", "port": port, "unit_id": 1}])
    async with simulating(Plant(config, frozen=True), modbus(config)), client(port) as c:
        answer = await c.read_input_registers(0, count=1, device_id=9)
        assert answer.isError() and answer.exception_code == 4
