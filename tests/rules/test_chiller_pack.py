"""The chiller pack on the plant's chiller readings: trip at once, COP only while running."""

from __future__ import annotations

from pathlib import Path

from dcim.core.events import Severity
from dcim.simulators.plant import Plant
from tests.rules.rig import Rig, hall


def chiller_seconds(r: Rig, plant: Plant, seconds: int, **override: object) -> None:
    for _ in range(seconds):
        r.clock.advance(1)
        r.healthy()
        values = {**plant.values("ch-1"), **override}
        r.send("ch-1", "chiller", values)  # type: ignore[arg-type]
        r.service.tick()


async def test_trip_fires_at_once_and_resolves_on_restart(rig: Rig) -> None:
    plant = Plant(rig.config, frozen=True)
    chiller_seconds(rig, plant, 5)
    assert rig.notifier.events == []
    plant.inject("ch-1", "trip")
    chiller_seconds(rig, plant, 1)
    assert rig.notifier.fired() == ["chiller-trip/ch-1"]
    assert rig.notifier.events[0].severity is Severity.CRITICAL
    plant.clear("ch-1")
    chiller_seconds(rig, plant, 1, status="running", running=True, alarm=False)
    assert rig.notifier.resolved() == ["chiller-trip/ch-1"]


async def test_low_cop_warns_only_while_running(tmp_path: Path) -> None:
    # The one chiller stops here, which the cooling-plant pack rightly calls capacity lost: not this test's
    # subject (tests/rules/test_cooling_plant.py).
    rig = Rig(hall(tmp_path, {"packs": {"cooling-plant": False}}))
    plant = Plant(rig.config, frozen=True)
    chiller_seconds(rig, plant, 900, running=False, status="stopped", cop=0.0)
    assert rig.notifier.events == []          # a chiller on standby has no COP to judge
    chiller_seconds(rig, plant, 601, running=True, status="running", cop=3.2)
    assert rig.notifier.fired() == ["chiller-cop/ch-1"]
    chiller_seconds(rig, plant, 1, running=False, status="stopped", cop=0.0)
    chiller_seconds(rig, plant, 300, running=False, status="stopped", cop=0.0)
    assert rig.notifier.resolved() == ["chiller-cop/ch-1"]


async def test_leaving_temperature_against_setpoint(rig: Rig) -> None:
    plant = Plant(rig.config, frozen=True)
    setpoint = float(plant.values("ch-1")["setpoint_c"])
    chiller_seconds(rig, plant, 121, leaving_temp_c=setpoint + 2.5)
    assert [(e.key, e.severity) for e in rig.notifier.events] == [("chiller-leaving-temp/ch-1", Severity.WARNING)]
    chiller_seconds(rig, plant, 121, leaving_temp_c=setpoint + 4.5)
    assert rig.notifier.events[-1].severity is Severity.CRITICAL


async def test_a_subscribed_chiller_sends_changes_only_and_its_values_hold(rig: Rig) -> None:
    plant = Plant(rig.config, frozen=True)
    assert "ch-1" in rig.service.engine.readings.push          # OPC UA, mode: subscribe (the default)
    setpoint = float(plant.values("ch-1")["setpoint_c"])
    chiller_seconds(rig, plant, 1, leaving_temp_c=setpoint + 2.5)
    for _ in range(600):                    # ten minutes without a data change from the chiller
        rig.clock.advance(1)
        rig.healthy()
        rig.service.tick()
    # The unchanged values still count (no no-data alarm), and the setpoint-relative threshold fired.
    assert rig.notifier.fired() == ["chiller-leaving-temp/ch-1"]
    rig.status("ch-1", False, "connection lost")
    rig.run(29)
    assert "device-offline/ch-1" not in rig.notifier.fired()   # rules.communication.for: 30 s
    rig.run(1)
    assert sorted(rig.notifier.fired()) == ["chiller-leaving-temp/ch-1", "device-offline/ch-1"]
