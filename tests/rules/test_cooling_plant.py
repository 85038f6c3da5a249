"""The cooling-plant pack and the budgets that follow cooling, on the plant model and the real rule engine.

The demo's own configuration and fault story (dcim.app.demo.scenario) run against the plant, second by
second on a fake clock: the chiller trip with the standby locked out raises "cooling capacity lost" and the
facility-supply alarm, and both resolve once a chiller runs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.demo import scenario
from dcim.core.events import AlarmState, Severity
from dcim.simulators.plant import Plant
from tests.rules.rig import Rig, hall

EXAMPLE = Path(__file__).parents[2] / "examples" / "hall.yaml"


def send_plant(rig: Rig, plant: Plant) -> None:
    """Every device's values as its poller would publish them (PDU phase rows too)."""
    for device in rig.config.devices:
        rows = None
        if device.kind == "pdu":
            rows = {(("phase", str(n)),): row for n, row in plant.rows(device.id, "phase").items()}
        rig.send(device.id, device.kind, plant.values(device.id), rows)


def fired_at(rig: Rig) -> dict[str, list[tuple[str, int]]]:
    """alarm key -> [(state, second)] from the outlet's record (what MQTT gets)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for event in rig.outlet.events:
        out.setdefault(event.key, []).append((str(event.state), event.ts_ns // 10**9))
    return out


def demo_story(tmp_path: Path) -> tuple[Rig, Plant, list[Any], int]:
    """The example hall on the rule engine and the plant, with the demo's fault story (steps by time) and the
    fake clock's start (s)."""
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    raw["state_dir"] = str(tmp_path)
    rig = Rig(raw)
    return rig, Plant(rig.config), sorted(scenario(rig.config), key=lambda s: s[0]), rig.clock.now_ns() // 10**9


def run_story(rig: Rig, plant: Plant, steps: list[Any], seconds: int) -> None:
    """Second by second: the story's steps that fall due, the plant, every device's values, the tick."""
    pending = list(steps)
    for second in range(seconds):
        while pending and pending[0][0] <= second:
            pending.pop(0)[2](plant)
        plant.advance(1.0)
        rig.clock.advance(1)
        send_plant(rig, plant)
        rig.service.tick()


async def test_demo_pump_failure_fires_the_derated_power_budget_before_the_pumps_are_back(tmp_path: Path) -> None:
    """While cdu-1 runs on no pump its racks' budget is derated (last_pump_budget_pct): A01 and A02 then draw
    more than their cooling supports, and the budget rule (for: 30s) must fire before the story restores the
    pumps, not race them."""
    rig, plant, steps, start = demo_story(tmp_path)
    failed_at = min(at for at, text, _ in steps if text.startswith("inject: pump failure"))
    restored_at = min(at for at, text, _ in steps if text.startswith("clear: pumps"))
    run_story(rig, plant, steps, int(restored_at) + 1)
    history = fired_at(rig)
    for rack in ("A01", "A02"):
        changes = history.get(f"liquid-rack-power-budget/{rack}")
        assert changes is not None, f"the derated budget of {rack} never fired: {sorted(history)}"
        fired = [t - start for state, t in changes if state == "firing"]
        assert fired and failed_at < fired[0] < restored_at, (rack, changes)


async def test_demo_chiller_trip_raises_capacity_lost_and_facility_supply_then_resolves(tmp_path: Path) -> None:
    rig, plant, steps, start = demo_story(tmp_path)
    chiller_steps = [at for at, text, _ in steps if "chiller" in text or "locked out" in text]
    trip_at = min(at for at, text, _ in steps if "trips" in text)
    restart_at = max(at for at, text, _ in steps if text.startswith("restart"))
    assert chiller_steps and restart_at > trip_at
    run_story(rig, plant, steps, int(restart_at) + 240)
    history = fired_at(rig)
    for cdu in ("cdu-1", "cdu-2"):
        for rule in ("cooling-capacity-lost", "facility-supply-temp"):
            changes = history.get(f"{rule}/{cdu}")
            assert changes is not None, f"{rule}/{cdu} never fired: {sorted(history)}"
            fired = [t - start for state, t in changes if state == "firing"]
            resolved = [t - start for state, t in changes if state == "resolved"]
            # Raised after the trip (not by the pump or feed faults before it), resolved after the restart.
            assert fired and trip_at < fired[0] < restart_at, (rule, cdu, changes)
            assert resolved and resolved[-1] > restart_at, (rule, cdu, changes)
            assert changes[-1][0] == "resolved"
    capacity = [e for e in rig.outlet.events if e.key == "cooling-capacity-lost/cdu-1"]
    assert capacity[0].severity is Severity.CRITICAL
    assert rig.service.store.active() == [] or all(
        not a.key.startswith(("cooling-capacity-lost", "facility-supply-temp")) for a in rig.service.store.active())


def plant_values(rig: Rig, *, facility_c: float, running: bool = True, pumps: tuple[bool, bool] = (True, True),
                 heat_kw: float = 200.0) -> None:
    """A healthy hall, with the facility water, the chiller and cdu-1's pumps as given."""
    for rack in ("A01", "A02", "B01", "B02"):
        rig.feed(rack, 50, 50)
    for rack in ("C01", "C02"):
        rig.feed(rack, 15, 15)
    for cdu in ("cdu-1", "cdu-2"):
        extra: dict[str, Any] = {"facility_supply_temp_c": facility_c, "heat_removed_kw": heat_kw}
        if cdu == "cdu-1":
            extra |= {"pump1_running": pumps[0], "pump2_running": pumps[1]}
        rig.cdu(cdu, **extra)
    rig.send("ch-1", "chiller", {"running": running, "setpoint_c": 18.0, "demand_limit_pct": 100.0})


def run(rig: Rig, seconds: int, **values: Any) -> None:
    for _ in range(seconds):
        rig.clock.advance(1)
        plant_values(rig, **values)
        rig.service.tick()


@pytest.mark.parametrize("ashrae,severity", [("W27", Severity.CRITICAL), ("W32", Severity.WARNING),
                                             ("W45", Severity.WARNING)])
async def test_facility_supply_thresholds_follow_the_sites_ashrae_class(
        tmp_path: Path, ashrae: str, severity: Severity) -> None:
    rig = Rig(hall(tmp_path, {"cooling": {"ashrae_class": ashrae}}))
    run(rig, 5, facility_c=18.5)
    assert rig.notifier.events == []
    run(rig, 31, facility_c=28.0)           # above setpoint + 2 K; above W27's 27 degC
    record = rig.service.store.get("facility-supply-temp/cdu-1")
    assert record.state is AlarmState.FIRING and record.severity is severity
    assert rig.rack_values("A01") != {}
    cdu = {s.point: s.value for b in rig.published if b.device == "cdu-1" and b.kind == "plant" for s in b.samples}
    assert cdu["facility_supply_max_c"] == {"W27": 27.0, "W32": 32.0, "W45": 45.0}[ashrae]
    assert cdu["facility_setpoint_c"] == 18.0
    run(rig, 31, facility_c=18.2)
    assert rig.service.store.active() == []


async def test_capacity_lost_with_no_running_chiller_or_too_little_capacity(tmp_path: Path) -> None:
    rig = Rig(hall(tmp_path, {"cooling": {"chiller_capacity_kw": {"ch-1": 500}}}))
    run(rig, 40, facility_c=18.0)                       # 2 x 200 kW on 500 kW: fine
    assert "cooling-capacity-lost/cdu-1" not in rig.notifier.fired()
    run(rig, 29, facility_c=18.0, running=False)        # pending for 30 s
    assert "cooling-capacity-lost/cdu-1" not in rig.notifier.fired()
    run(rig, 2, facility_c=18.0, running=False)
    assert rig.service.store.get("cooling-capacity-lost/cdu-1").value == -400.0
    run(rig, 40, facility_c=18.0, heat_kw=200.0)        # running again
    assert "cooling-capacity-lost/cdu-1" in rig.notifier.resolved()
    run(rig, 40, facility_c=18.0, heat_kw=300.0)        # 600 kW of heat on a 500 kW chiller
    assert rig.service.store.get("cooling-capacity-lost/cdu-1").state is AlarmState.FIRING


async def test_a_chiller_that_does_not_report_is_no_reason_for_capacity_lost(tmp_path: Path) -> None:
    rig = Rig(hall(tmp_path))
    rig.run(120)                                        # CDUs carry heat; the chiller never reported
    assert all(not k.startswith("cooling-capacity-lost") for k in rig.notifier.fired())


async def test_rack_budget_is_derated_while_its_cdu_runs_on_its_last_pump(tmp_path: Path) -> None:
    rig = Rig(hall(tmp_path, {"cooling": {"last_pump_budget_pct": 60}}))
    run(rig, 40, facility_c=18.0)
    assert rig.rack_values("A01")["cooling_budget_kw"] == 150.0
    run(rig, 40, facility_c=18.0, pumps=(True, False))  # 100 kW against 90 kW
    assert rig.rack_values("A01")["cooling_budget_kw"] == 90.0
    assert rig.rack_values("A01")["cooled_utilization_pct"] == pytest.approx(111.111, abs=1e-3)
    assert rig.rack_values("A01")["utilization_pct"] == pytest.approx(66.667, abs=1e-3)
    firing = {a.key: a.severity for a in rig.service.store.active()}
    assert firing.get("liquid-rack-power-budget/A01") is Severity.CRITICAL
    assert firing.get("liquid-rack-power-budget/A02") is Severity.CRITICAL
    assert "liquid-rack-power-budget/B01" not in firing          # cdu-2 has both pumps
    run(rig, 70, facility_c=18.0)
    assert "liquid-rack-power-budget/A01" in rig.notifier.resolved()
