"""Electrical semantics end to end: the SNMP simulator, the real driver and profiles, then rules.metrics.

A Raritan PX3 with a wye inlet serves four poles (L1, L2, L3 and the neutral, pole 4); an APC rPDU2 serves
three phases with line-to-neutral voltages. The phase imbalance of each comes out as the hand computation
from the line currents (the neutral is never a phase), a Raritan outlet whose power factor sensor is
unavailable reads as a BAD sample with the reason, and the two voltage kinds keep their own names.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests/drivers/test_snmp_support.py
from __future__ import annotations

import math

import pytest

from dcim.app.config import Config, parse_config
from dcim.core.samples import Batch, Quality, Sample
from dcim.core.topology import Topology
from dcim.drivers.base import DriverContext
from dcim.rules.metrics import RackMetrics, Readings
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import SnmpSimulator
from tests.drivers.test_snmp_support import by_series, context, open_driver, pdu, snmp_env  # noqa: F401

# A clearly unbalanced load: L1 6 % above the mean, L3 6 % below.
WEIGHTS = (1.06, 1.0, 0.94)
HAND_IMBALANCE_PCT = 6.0  # max |I - Iavg| / Iavg x 100 for the weights above


def hall() -> dict[str, object]:
    devices = [pdu("rpx-wye", "raritan-px"), pdu("apc-3ph", "apc-rpdu2")]
    racks = [{"id": f"R{n}", "cooling": "air", "power_budget_kw": 60,
              "feeds": {"a": {"pdu": device["id"], "breaker_a": 125}}} for n, device in enumerate(devices, 1)]
    return {"site": {"id": "test"}, "rooms": [{"id": "r1", "rows": [{"id": "A", "racks": racks}]}],
            "devices": devices}


@pytest.fixture
def config(snmp_env: None) -> Config:
    return parse_config(hall())


@pytest.fixture
def plant(config: Config) -> Plant:
    plant = Plant(config, frozen=True)
    plant.PHASE_WEIGHTS = WEIGHTS  # type: ignore[misc]
    return plant


async def read(config: Config, device: str, context: DriverContext) -> list[Sample]:
    driver = await open_driver(config, device, context)
    try:
        return await driver.read()
    finally:
        await driver.close()


def imbalance_by_hand(currents: list[float]) -> float:
    mean = sum(currents) / len(currents)
    return max(abs(i - mean) for i in currents) / mean * 100.0


async def test_phase_imbalance_of_a_wye_raritan_and_a_three_phase_apc(
        config: Config, plant: Plant, context: DriverContext) -> None:
    async with SnmpSimulator(plant, config.devices, refresh=0):  # type: ignore[arg-type]
        raritan = await read(config, "rpx-wye", context)
        apc = await read(config, "apc-3ph", context)
    # The Raritan agent serves pole 4 (the neutral) under the same pole column as the lines.
    neutral = [s for s in raritan if s.point == "neutral_current_a"]
    assert len(neutral) == 1 and neutral[0].tags == (("pole", "4"),)
    assert neutral[0].value == pytest.approx(plant.rows("rpx-wye", "pole")[4]["neutral_current_a"])
    assert float(neutral[0].value or 0) > 5.0  # an unbalanced wye load puts current on the neutral
    for samples in (raritan, apc):
        phases = sorted(s.tags for s in samples if s.point == "current_a" and s.tags[0][0] == "phase")
        assert phases == [(("phase", "1"),), (("phase", "2"),), (("phase", "3"),)]

    topology = Topology(config)
    readings = Readings(stale_after_ns=15 * 10**9)
    now = max(s.ts_ns for s in raritan + apc)
    for device, samples in (("rpx-wye", raritan), ("apc-3ph", apc)):
        readings.update(Batch(device, "pdu", now, samples))
    rack = {b.device: {s.point: s.value for s in b.samples} for b in RackMetrics(topology, readings).compute(now)}

    for rack_id, samples in (("R1", raritan), ("R2", apc)):
        currents = [float(s.value or 0) for s in sorted(samples, key=lambda s: s.tags)
                    if s.point == "current_a" and s.tags[0][0] == "phase"]
        got = rack[rack_id]["phase_imbalance_pct"]
        assert isinstance(got, float)
        # The hand computation on the currents the PDU reported (the metric rounds to 3 decimals) ...
        assert got == pytest.approx(imbalance_by_hand(currents), abs=1e-3)
        # ... and on the load as drawn: within 0.5 % (the PDUs report currents to 0.1 A).
        assert abs(got - HAND_IMBALANCE_PCT) <= 0.5, (rack_id, got)
    # Counting the neutral as a fourth phase would have read far beyond the critical 20 %.
    raritan_lines = [float(s.value or 0) for s in raritan if s.point == "current_a" and s.tags[0][0] == "phase"]
    assert imbalance_by_hand([*raritan_lines, float(neutral[0].value or 0)]) > 50


async def test_line_to_line_and_line_to_neutral_voltages_keep_their_names(
        config: Config, plant: Plant, context: DriverContext) -> None:
    async with SnmpSimulator(plant, config.devices, refresh=0):  # type: ignore[arg-type]
        raritan = by_series(await read(config, "rpx-wye", context))
        apc = by_series(await read(config, "apc-3ph", context))
    for phase in "123":
        tags = (("phase", phase),)
        assert apc[("pdu", "voltage_ln_v", tags)] == 230.0
        assert raritan[("pdu", "voltage_ll_v", tags)] == round(230.0 * math.sqrt(3))
        assert ("pdu", "voltage_ln_v", tags) not in raritan and ("pdu", "voltage_ll_v", tags) not in apc
    assert not any(key[1] == "voltage_v" for key in (*raritan, *apc))


async def test_an_unavailable_sensor_state_is_a_bad_sample_not_zero(
        config: Config, plant: Plant, context: DriverContext) -> None:
    plant.switch_outlet("rpx-wye", 3, False)
    async with SnmpSimulator(plant, config.devices, refresh=0):  # type: ignore[arg-type]
        samples = await read(config, "rpx-wye", context)
    pf = {s.tags: s for s in samples if s.measurement == "pdu_outlet" and s.point == "power_factor"}
    off = pf[(("outlet", "3"),)]
    assert off.quality is Quality.BAD and off.value is None
    assert off.reason == "sensor unavailable (state -1)"
    on = pf[(("outlet", "4"),)]
    assert on.quality is Quality.GOOD and on.value == 0.97
