"""Shared pieces of the SNMP tests: a small hall of PDUs, a frozen plant, the simulator, expected values.

Imported by tests/drivers/test_snmp_*.py and tests/simulators/test_snmp_*.py (fixtures by name).
Two air-cooled racks, each with an A and a B PDU, one of each vendor per rack:

    A01 (50 kW): a = apc-a01 (v2c)       b = rpx-a01 (v2c)
    A02 (60 kW): a = rpx-a02 (v3 authPriv SHA-256 + AES-128)   b = apc-a02 (v3 authPriv)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dcim.app.config import Config, parse_config
from dcim.core.samples import Sample, Value
from dcim.drivers.base import DriverContext
from dcim.drivers.profiles import load_profile
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.driver import SnmpDriver, make_driver
from dcim.drivers.snmp.points import Point
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import SnmpSimulator
from tests.helpers import hand_over

AUTH_KEY = "auth-key-4-tests"
PRIV_KEY = "priv-key-4-tests"
V3 = {"version": "3", "user": "dcim-v3", "auth_protocol": "sha256", "auth_key": "env:DCIM_TEST_SNMP_AUTH",
      "priv_protocol": "aes128", "priv_key": "env:DCIM_TEST_SNMP_PRIV"}


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free right now, released on return: only for a server of the test's own that binds it
    itself. For the SNMP simulator use tests.helpers.hold_udp_port() and hand_over(): never released."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pdu(device_id: str, profile: str, **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": free_udp_port(),
            "profile": profile, "community": "public", "write_community": "private",
            # A generous request timeout and poll deadline: tests share two cores with everything else, and a
            # v3 agent (pysnmp, in the test's own event loop) took more than 2 x 300 ms to answer under
            # stress-ng. Deadline tests set theirs.
            "interval": "1s", "timeout": "2s", "retries": 1, "deadline": "5s", **extra}


def hall(devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    devices = devices if devices is not None else [
        pdu("apc-a01", "apc-rpdu2"), pdu("rpx-a01", "raritan-px"),
        pdu("rpx-a02", "raritan-px", **V3), pdu("apc-a02", "apc-rpdu2", **V3),
    ]
    ids = [d["id"] for d in devices]
    racks = []
    for n, pair in enumerate(zip(ids[0::2], ids[1::2], strict=False), start=1):
        racks.append({"id": f"A0{n}", "cooling": "air", "power_budget_kw": 40 + 10 * n,
                      "feeds": {"a": {"pdu": pair[0], "breaker_a": 63}, "b": {"pdu": pair[1], "breaker_a": 63}}})
    return {"site": {"id": "test"}, "rooms": [{"id": "r1", "rows": [{"id": "A", "racks": racks}]}],
            "devices": devices}


@pytest.fixture
def snmp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCIM_TEST_SNMP_AUTH", AUTH_KEY)
    monkeypatch.setenv("DCIM_TEST_SNMP_PRIV", PRIV_KEY)


@pytest.fixture
def pdu_config(snmp_env: None) -> Config:
    return parse_config(hall())


@pytest.fixture
def plant(pdu_config: Config) -> Plant:
    plant = hand_over(Plant(pdu_config, frozen=True), pdu_config.devices)
    plant.racks["A02"].outlets = 48
    return plant


@pytest.fixture
async def simulator(plant: Plant, pdu_config: Config) -> AsyncIterator[SnmpSimulator]:
    # refresh=0: every request sees the plant as it is now (tests change it between requests).
    async with SnmpSimulator(plant, pdu_config.devices, refresh=0) as sim:  # type: ignore[arg-type]
        yield sim


@pytest.fixture
def context() -> Iterator[DriverContext]:
    yield DriverContext()


def snmp_device(config: Config, device_id: str) -> SnmpDevice:
    device = config.device(device_id)
    assert isinstance(device, SnmpDevice)
    return device


async def open_driver(config: Config, device_id: str, context: DriverContext) -> SnmpDriver:
    device = config.device(device_id)
    driver = make_driver(device, load_profile(device.profile), context)
    assert isinstance(driver, SnmpDriver)
    await driver.connect()
    return driver


def quantized(point: Point, value: Value) -> Value:
    """The plant's value at the resolution the vendor serves it (what a perfect driver reads back)."""
    if point.enum is not None or isinstance(value, str):
        return value
    step = point.scale / 10 ** (point.digits or 0)
    return float(round(float(value) / step) * step)


def expected(plant: Plant, device_id: str, point: Point) -> dict[tuple[tuple[str, str], ...], Value]:
    """Series key (tags) -> the plant's value for one profile point."""
    if point.index_tag is not None:
        rows = plant.rows(device_id, point.index_tag)
        return {((point.index_tag, str(n)),): quantized(point, row[point.name]) for n, row in rows.items()
                if point.name in row}
    if point.tags:
        key, text = next(iter(point.tags.items()))
        row = plant.rows(device_id, key)[int(text)]
        return {((key, text),): quantized(point, row[point.name])}
    return {(): quantized(point, plant.values(device_id)[point.name])}


def by_series(samples: list[Sample]) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], Any]:
    """(measurement, point, tags) -> value (Any: tests compare numbers and strings directly)."""
    return {(s.measurement, s.point, s.tags): s.value for s in samples}
