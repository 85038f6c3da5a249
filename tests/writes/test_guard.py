"""Each guard of the one write path, through the real drivers against the simulators: a refused write says
what was refused and why, and nothing reaches the simulator; an allowed one is verified by read-back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.core.samples import Value
from dcim.drivers.profiles import BUILTIN_DIR, parse_profile
from dcim.rules.clock import NS
from tests.e2e.harness import simulators
from tests.writes.rig import CountingPlant, direct, hall, load


async def refused(tmp_path: Path, device: str, point: str, value: Value, *, control: dict[str, Any] | None = None,
                  origin: str = "cli:tester") -> str:
    """Write through the guard against running simulators; assert it was refused and nothing arrived."""
    config = load(hall(tmp_path, control=control))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        result = await rig.write(device, point, value, origin=origin)
        assert result.outcome == "refused", result
        assert plant.received == []
        records = list(rig.audit.records())
    assert [(r["outcome"], r["device"], r["point"], r["reason"]) for r in records] == [
        ("refused", device, point, result.reason)]
    return result.reason


async def test_read_only_point_is_refused(tmp_path: Path) -> None:
    assert "read-only" in await refused(tmp_path, "cdu-1", "supply_temp_c", 20.0)


async def test_value_out_of_the_profile_range_is_refused(tmp_path: Path) -> None:
    reason = await refused(tmp_path, "cdu-1", "flow_setpoint_lpm", 5000)
    assert "outside the allowed range 20.0..2000.0" in reason


async def test_value_off_the_step_is_refused(tmp_path: Path) -> None:
    assert "not a multiple of the step 0.1" in await refused(tmp_path, "cdu-1", "supply_temp_setpoint_c", 30.55)


async def test_not_armed_refuses_an_operator_write_unless_operator_writes_are_allowed(tmp_path: Path) -> None:
    reason = await refused(tmp_path, "cdu-1", "flow_setpoint_lpm", 450, control={"armed": False})
    assert "not armed" in reason and "operator_writes" in reason


async def test_not_armed_refuses_a_rule_write_even_with_operator_writes(tmp_path: Path) -> None:
    reason = await refused(tmp_path, "pdu-1", "outlet_command:3", "off", origin="rule:leak-power-off",
                           control={"armed": False, "operator_writes": True})
    assert reason == "control is not armed (rules.control.armed is false)"


async def test_maintenance_window_on_the_rack_refuses_the_write(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        now = rig.guard.now()
        rig.store.add_maintenance("A01", now - NS, now + 3600 * NS, "pump swap")
        result = await rig.write("cdu-1", "flow_setpoint_lpm", 450)
        assert (result.outcome, result.reason) == ("refused", "maintenance window on A01 (pump swap)")
        assert plant.received == []


async def test_rate_limit_refuses_a_second_write_to_the_same_point(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        first = await rig.write("cdu-1", "flow_setpoint_lpm", 450)
        assert first.outcome == "verified", first
        second = await rig.write("cdu-1", "flow_setpoint_lpm", 460)
        assert second.outcome == "refused" and second.reason.startswith("rate limit: cdu-1 flow_setpoint_lpm")
        assert plant.received == [("cdu-1", "flow_setpoint_lpm", 450.0)]
    # A new process (a second `dcim write --direct`) remembers through the audit trail.
    async with simulators(config, plant), direct(config) as rig:
        third = await rig.write("cdu-1", "flow_setpoint_lpm", 470)
        assert third.outcome == "refused" and third.reason.startswith("rate limit")
    assert len(plant.received) == 1


async def test_a_verified_setpoint_write_reads_back_what_was_written(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        old = plant.cdus["cdu-1"].supply_setpoint_c
        result = await rig.write("cdu-1", "supply_temp_setpoint_c", 31.5)
        assert result.outcome == "verified", result
        assert result.old == pytest.approx(old) and result.new == pytest.approx(31.5)
        assert (result.raw, result.address) == ("315", "holding 100 (unit 1)")
        assert plant.cdus["cdu-1"].supply_setpoint_c == pytest.approx(31.5)
        [record] = rig.audit.records()
    assert record["outcome"] == "verified" and record["origin"] == "cli:tester" and record["new"] == 31.5


async def test_an_outlet_off_is_verified_by_the_outlet_state(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        result = await rig.write("pdu-1", "outlet_command:3", "off")
        assert (result.outcome, result.old, result.new, result.stops) == ("verified", "on", "off", True), result
        assert result.address == "SET 1.3.6.1.4.1.318.1.1.26.9.2.4.1.5.3" and result.raw == "2"
    assert plant.received == [("pdu-1", "outlet:3", False)]


async def test_an_unconfirmed_stop_is_refused(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        result = await rig.write("pdu-1", "outlet_command:3", "off", confirmed=False)
        assert result.outcome == "refused" and "needs confirmation" in result.reason
        assert plant.received == []


async def test_a_dry_run_sends_nothing_and_shows_what_would_be_sent(tmp_path: Path) -> None:
    config = load(hall(tmp_path))
    plant = CountingPlant(config)
    async with simulators(config, plant), direct(config) as rig:
        result = await rig.write("cdu-1", "flow_setpoint_lpm", 450, dry_run=True)
        assert (result.outcome, result.raw, result.address) == ("dry-run", "450", "holding 101 (unit 1)")
    assert plant.received == []


async def test_a_range_error_is_reported_before_connecting_to_an_unreachable_device(tmp_path: Path) -> None:
    # No simulators at all: the device does not answer, the profile's verdict comes first.
    config = load(hall(tmp_path))
    async with direct(config) as rig:
        result = await rig.write("cdu-1", "flow_setpoint_lpm", 5000)
    assert result.outcome == "refused" and "outside the allowed range" in result.reason


def wide_chiller() -> Any:
    """generic-chiller with a setpoint range wider than the server's EURange (5..30 degC)."""
    raw = yaml.safe_load((BUILTIN_DIR / "generic-chiller.yaml").read_text())
    raw["name"] = "wide-chiller"
    for point in raw["points"]:
        if point["name"] == "setpoint_c":
            point["writable"] = {"min": 0.0, "max": 50.0, "step": 0.1}
    return parse_profile(raw)


async def test_opcua_eurange_narrower_than_the_profile_refuses_before_sending(tmp_path: Path) -> None:
    config = load(hall(tmp_path, chiller=True))
    plant = CountingPlant(config)
    # The simulator serves generic-chiller (EURange 5..30); the driver believes the wide profile.
    async with simulators(config, plant), direct(config, profiles={"chiller-1": wide_chiller()}) as rig:
        for value in (40.0, 2.0):
            result = await rig.write("chiller-1", "setpoint_c", value)
            assert result.outcome == "refused", result
            assert result.reason == f"setpoint_c: {value} is outside the device's own range 5..30 " \
                                    f"(EURange reported by the device)"
        assert plant.received == []
        assert plant.chillers["chiller-1"].setpoint_c == 18.0
        ok = await rig.write("chiller-1", "setpoint_c", 20.0)
        assert ok.outcome == "verified", ok
    assert plant.received == [("chiller-1", "setpoint_c", 20.0)]


async def test_a_table_point_without_its_row_is_refused(tmp_path: Path) -> None:
    reason = await refused(tmp_path, "pdu-1", "outlet_command", "off")
    assert reason == "outlet_command addresses one outlet: write outlet_command:<outlet>, e.g. outlet_command:7"
