"""Derived rack metrics from realistic sample batches: the plant model's PDU and CDU readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcim.core.samples import Batch, Quality, Sample
from dcim.rules.metrics import feed_capacity_kw
from dcim.simulators.plant import Plant
from tests.rules.rig import Rig, hall, rig_with


def from_plant(r: Rig, plant: Plant) -> None:
    """One poll of every PDU and CDU, as the drivers would deliver it (phase rows tagged `phase`)."""
    for device, kind in r.topology.kinds.items():
        if kind == "chiller":
            continue
        rows = None
        if kind == "pdu":
            rows = {(("phase", str(i)),): row for i, row in plant.rows(device, "phase").items()}
        r.send(device, kind, plant.values(device), rows)


def tick(r: Rig, plant: Plant) -> dict[str, dict[str, object]]:
    r.clock.advance(1)
    from_plant(r, plant)
    r.published.clear()
    r.service.tick()
    return {rack: r.rack_values(rack) for rack in r.topology.racks}


@pytest.fixture
def plant_rig(tmp_path: Path) -> tuple[Rig, Plant]:
    r = Rig(hall(tmp_path))
    return r, Plant(r.config, frozen=True)


def test_power_metrics_match_the_plant(plant_rig: tuple[Rig, Plant]) -> None:
    r, plant = plant_rig
    racks = tick(r, plant)
    a01 = racks["A01"]
    state = plant.racks["A01"]
    expected = plant.rack_power_kw(state)
    assert a01["power_kw"] == pytest.approx(expected, rel=1e-3)
    assert a01["power_a_kw"] == pytest.approx(expected / 2, rel=1e-3)
    assert a01["utilization_pct"] == pytest.approx(expected / 150 * 100, rel=1e-3)
    capacity = 250 * 230 * 3 * 0.8 / 1000
    assert a01["feed_capacity_kw"] == pytest.approx(capacity)
    assert a01["redundant_headroom_kw"] == pytest.approx(capacity - expected, rel=1e-3)
    # The plant's phases carry 1.04 / 0.98 / 0.98 of a third of the feed: 4 % imbalance.
    assert a01["phase_imbalance_pct"] == pytest.approx(4.0, abs=0.2)
    phase_current = expected / 2 * 1000 / 3 * 1.04 / 230
    assert a01["branch_load_pct"] == pytest.approx(phase_current / 250 * 100, rel=0.01)


def test_feed_trip_leaves_b_without_redundant_headroom(plant_rig: tuple[Rig, Plant]) -> None:
    r, plant = plant_rig
    before = tick(r, plant)["A01"]
    assert isinstance(before["redundant_headroom_kw"], float) and before["redundant_headroom_kw"] > 0
    plant.inject("pdu-A01-a", "feed_trip")
    after = tick(r, plant)["A01"]
    assert after["power_a_kw"] == 0.0
    assert after["power_b_kw"] == pytest.approx(before["power_kw"], rel=1e-3)
    # Nothing left if B fails too: the rack runs without redundancy.
    assert after["redundant_headroom_kw"] == pytest.approx(-after["power_kw"], rel=1e-3)  # type: ignore[operator]
    assert tick(r, plant)["A02"]["redundant_headroom_kw"] == before["redundant_headroom_kw"]


def test_pump_failure_drops_the_flow_ratio(plant_rig: tuple[Rig, Plant]) -> None:
    r, plant = plant_rig
    before = tick(r, plant)
    assert before["A01"]["flow_ratio_pct"] == pytest.approx(before["A02"]["flow_ratio_pct"])  # one loop
    assert before["A01"]["flow_ratio_pct"] > 90  # type: ignore[operator]
    plant.inject("cdu-1", "pump_failure")
    after = tick(r, plant)
    assert after["A01"]["flow_ratio_pct"] == 0.0
    assert after["A01"]["flow_delivered_lpm"] == 0.0
    assert after["B01"]["flow_ratio_pct"] == before["B01"]["flow_ratio_pct"]  # the other loop


def test_missing_inputs_give_bad_samples_with_reasons(plant_rig: tuple[Rig, Plant]) -> None:
    r, plant = plant_rig
    tick(r, plant)
    r.clock.advance(20)                 # past stale_after (15 s): only the CDUs report now
    for cdu in ("cdu-1", "cdu-2"):
        r.send(cdu, "cdu", plant.values(cdu))
    r.published.clear()
    r.service.tick()
    batch = next(b for b in r.published if b.kind == "rack" and b.device == "A01")
    power = next(s for s in batch.samples if s.point == "power_kw")
    assert power.quality is Quality.BAD and "pdu-A01-a" in power.reason
    assert not any(s.point == "flow_ratio_pct" for s in batch.samples if s.quality is Quality.GOOD)


def test_feed_capacity_single_phase() -> None:
    from dcim.core.topology import Feed

    assert feed_capacity_kw(Feed(pdu="p", breaker_a=32, voltage_v=230, phases=1)) == pytest.approx(5.888)
    assert feed_capacity_kw(Feed(pdu="p", breaker_a=32, voltage_v=230, phases=3)) == pytest.approx(17.664)


async def test_phase_imbalance_and_branch_load_edge_cases(rig: Rig) -> None:
    rig.clock.advance(1)
    rig.feed("A01", 50, 50, phases=(80.0, 60.0, 70.0))     # Iavg 70: max deviation 10 -> 14.3 %
    rig.feed("A02", 0.05, 0.05, phases=(0.4, 0.1, 0.2))    # Iavg 0.23 A: imbalance means nothing
    rig.feed("B01", 50, 50)                                 # no phase rows: branch load from power
    rig.service.tick()
    a01, a02, b01 = (rig.rack_values(r) for r in ("A01", "A02", "B01"))
    assert a01["phase_imbalance_pct"] == pytest.approx(100 * 10 / 70, rel=1e-3)
    assert a01["branch_load_pct"] == pytest.approx(80 / 250 * 100)
    assert "phase_imbalance_pct" not in a02
    assert "phase_imbalance_pct" not in b01
    assert b01["branch_load_pct"] == pytest.approx(50 / (230 * 3 * 250 / 1000) * 100, rel=1e-3)


def test_the_readings_kept_are_the_same_whether_rules_judge_the_device_or_not(tmp_path: Path) -> None:
    # A device no rule judges (a PDU of this hall; every device with rules off) has its readings kept in a
    # pass of its own: the same readings as the full pass keeps for a device whose points rules judge (a
    # CDU), through new values, repeats, a BAD and a STALE sample (which withdraw the value), a value back,
    # and table rows.
    judged = rig_with(tmp_path / "judged", {})
    alone = rig_with(tmp_path / "alone", {"enabled": False})
    assert judged.service.engine.by_point.get("cdu-1") and not alone.service.engine.by_point
    assert "pdu-A01-a" not in judged.service.engine.by_point
    for rig in (judged, alone):
        rows = {(("loop", "1"),): {"flow_lpm": 200.0}, (("loop", "2"),): {"flow_lpm": 210.0}}
        rig.send("cdu-1", "cdu", {"flow_lpm": 450.0, "leak": False, "supply_temp_c": 32.0}, rows)
        rig.clock.advance(1)
        rig.send("cdu-1", "cdu", {"flow_lpm": 450.0, "leak": False, "supply_temp_c": 32.5})
        rig.clock.advance(1)
        now = rig.clock.now_ns()
        rig.pipeline.publish(Batch("cdu-1", "cdu", now, [
            Sample("cdu-1", "flow_lpm", None, now, Quality.BAD, "timeout", "cdu"),
            Sample("cdu-1", "leak", True, now, Quality.STALE, "old", "cdu"),
            Sample("cdu-1", "supply_temp_c", 33.0, now, measurement="cdu"),
            Sample("cdu-1", "flow_lpm", None, now, Quality.BAD, "timeout", "cdu", (("loop", "2"),)),
        ]))
        rig.clock.advance(1)
        rig.send("cdu-1", "cdu", {"supply_temp_c": 33.5, "valve_pct": 40.0})
    kept = [({p: (r.value, r.ts_ns) for p, r in rig.service.engine.readings.points["cdu-1"].items()},
             {k: {p: (r.value, r.ts_ns) for p, r in row.items()}
              for k, row in rig.service.engine.readings.rows["cdu-1"].items()})
            for rig in (judged, alone)]
    assert kept[0] == kept[1]
    points, rows = kept[1]
    assert {p: v for p, (v, _) in points.items()} == {"supply_temp_c": 33.5, "valve_pct": 40.0}
    loop_1, loop_2 = ("cdu", (("loop", "1"),)), ("cdu", (("loop", "2"),))
    assert set(rows) == {loop_1, loop_2} and rows[loop_1]["flow_lpm"][0] == 200.0 and rows[loop_2] == {}
