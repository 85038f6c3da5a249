"""docs/modbus.md: its configuration and profile samples are valid, and say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dcim.app.config import parse_config
from dcim.drivers.base import DriverContext
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.driver import make_driver
from dcim.drivers.profiles import load_profile, parse_profile

DOC = Path(__file__).resolve().parents[2] / "docs" / "modbus.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_configuration_sample_loads() -> None:
    config = parse_config(yaml.safe_load(yaml_blocks()[0]), source=str(DOC))
    devices = [d for d in config.devices if isinstance(d, ModbusDevice)]
    assert [d.id for d in devices] == ["cdu-1", "rpu-a02", "rpu-a03"]
    assert devices[0].timeout == 0.5 and devices[0].max_gap == 16
    context = DriverContext()
    drivers = [make_driver(d, load_profile(d.profile), context) for d in devices]
    # The two rack pump units share their gateway's connection.
    assert drivers[1].connection is drivers[2].connection is not drivers[0].connection


def test_the_profile_sample_validates() -> None:
    profile = parse_profile(yaml.safe_load(yaml_blocks()[1]))
    assert profile.points[0].table == "holding" and profile.points[0].scale == 0.1


def test_the_documented_request_counts_hold() -> None:
    text = DOC.read_text()
    for name in ("generic-cdu", "ocp-orv3-rpu"):
        device = ModbusDevice(id="d", kind="cdu", protocol="modbus", profile=name)
        driver = make_driver(device, load_profile(name), DriverContext())
        assert re.search(rf"\| `{name}` \|.*\| {len(driver.plan)} \|", text)
