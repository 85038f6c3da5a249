"""The shared connection's own logic: backoff delays, sharing by host:port, request metrics."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from dcim.app.config import parse_config
from dcim.core.backoff import Backoff
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import DeviceUnreachable
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.connection import REQUESTS, join, leave
from dcim.drivers.modbus.driver import make_driver
from dcim.drivers.profiles import load_profile
from dcim.simulators.modbus import ModbusSimulator
from dcim.simulators.plant import Plant
from tests.helpers import free_port, gains


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    nominal = [min(2.0, 0.1 * 2**i) for i in range(10)]
    assert all(n / 2 <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d / n, 6) for d, n in zip(delays, nominal, strict=True)}) > 1  # jittered
    assert max(delays) <= 2.0
    backoff.reset()
    assert backoff.next() <= 0.1


def device(id_: str, port: int, unit: int = 1) -> ModbusDevice:
    return ModbusDevice(id=id_, kind="cdu", protocol="modbus", port=port, unit_id=unit, profile="generic-cdu")


async def test_one_connection_per_host_and_port_closed_by_its_last_user() -> None:
    context = DriverContext()
    a, b, c = device("a", 1502), device("b", 1502, unit=2), device("c", 1503)
    first, second, third = join(context, a), join(context, b), join(context, c)
    assert first is second and first is not third
    assert first.users == {"a", "b"}
    await leave(context, a, first)
    assert "modbus:127.0.0.1:1502" in context.shared
    await leave(context, b, second)
    assert "modbus:127.0.0.1:1502" not in context.shared
    await leave(context, c, third)
    assert context.shared == {}


async def test_requests_are_counted_per_gateway() -> None:
    port = free_port()
    config = parse_config({
        "site": {"id": "t"},
        "rooms": [{"id": "r", "rows": [{"id": "A", "racks": [
            {"id": "R1", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1"}]}]}],
        "devices": [{"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "port": port,
                     "profile": "generic-cdu"}],
    })
    dev = config.devices[0]
    assert isinstance(dev, ModbusDevice)
    gateway = f"127.0.0.1:{port}"
    gained = gains(REQUESTS)
    simulator = ModbusSimulator(Plant(config, frozen=True), [dev])
    await simulator.start()
    driver = make_driver(dev, load_profile("generic-cdu"), DriverContext())
    try:
        await driver.read()
    finally:
        await driver.close()
        await simulator.stop()
    assert gained(gateway=gateway, result="ok") == 3


async def test_a_connect_that_hangs_times_out_and_backs_off() -> None:
    # A listener whose backlog is full drops further SYNs: connecting to it hangs, like a firewalled host.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(filler)
            dev = ModbusDevice(id="d", kind="cdu", protocol="modbus", port=port, profile="generic-cdu",
                               timeout=0.2)
            driver = make_driver(dev, load_profile("generic-cdu"), DriverContext())
            try:
                # The driver's own timeout ends the hang; the outer bound only turns a hang into a failure.
                async with asyncio.timeout(30):
                    with pytest.raises(DeviceUnreachable, match="timed out") as first:
                        await driver.connect()
                # Backing off now: the next attempt fails at once, with the same text.
                with pytest.raises(DeviceUnreachable) as second:
                    await driver.read()
                assert str(second.value) == str(first.value)
            finally:
                await driver.close()
        finally:
            for filler in fillers:
                filler.close()
