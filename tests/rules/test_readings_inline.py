"""The rule engine keeps the latest good values in the same pass that finds the rules a batch judges
(`Engine.on_batch`, `Readings.update` inline). What it keeps must be exactly what `Readings.update` keeps
from the same batches: every device's points and table rows, with their times, over a random run where
values change type, repeat, go BAD or STALE, turn to text, and rows come and go."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from dcim.core.samples import Batch, Quality, Sample
from dcim.rules.metrics import Readings
from tests.rules.rig import Rig, hall
from tests.rules.test_tick_settled import RULES


def _kept(readings: Readings) -> tuple[dict[str, Any], dict[str, Any]]:
    points = {device: {point: (r.value, type(r.value), r.ts_ns) for point, r in kept.items()}
              for device, kept in readings.points.items() if kept}
    rows = {device: {key: {point: (r.value, type(r.value), r.ts_ns) for point, r in row.items()}
                     for key, row in kept.items() if row}
            for device, kept in readings.rows.items()}
    return points, {device: kept for device, kept in rows.items() if kept}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_engine_keeps_what_readings_update_keeps(tmp_path: Path, seed: int) -> None:
    r = Rig(hall(tmp_path, {"rules": RULES}))
    engine = r.service.engine
    shadow = Readings(engine.readings.stale_after_ns)
    rng = random.Random(seed)
    replayed = 0
    withdrawn = changed_type = 0
    for _ in range(200):
        r.clock.advance(rng.choice((1, 1, 1, 30)))  # now and then long enough for values to go stale
        now = r.clock.now_ns()
        for cdu in ("cdu-1", "cdu-2"):
            samples = []
            for point in ("supply_temp_c", "flow_lpm", "pump_fault", "reservoir_level"):
                roll = rng.random()
                if roll < 0.1:
                    samples.append(Sample(cdu, point, None, now, rng.choice((Quality.BAD, Quality.STALE)),
                                          "timed out", "cdu"))
                    withdrawn += 1
                elif roll < 0.2:
                    # The same number as an int, a float, a flag, or a text: a change of type is a change.
                    samples.append(Sample(cdu, point, rng.choice((1, 1.0, True, "1")), now, measurement="cdu"))
                    changed_type += 1
                elif roll < 0.3:
                    continue  # not in this poll
                else:
                    samples.append(Sample(cdu, point, rng.choice((32.0, 32.0, 33.5)), now, measurement="cdu"))
            r.pipeline.publish(Batch(cdu, "cdu", now, samples))
        for rack in ("A01", "A02", "C01"):
            phases = None if rng.random() < 0.3 else (rng.choice((10.0, 12.0)), 11.0, 11.5)
            r.feed(rack, rng.choice((20.0, 40.0)), 40.0, phases=phases)
        r.service.tick()
        for batch in r.published[replayed:]:
            if batch.kind != "alarm":
                shadow.update(batch)
        replayed = len(r.published)
        assert _kept(engine.readings) == _kept(shadow)
    assert withdrawn > 50 and changed_type > 50
    points, rows = _kept(shadow)
    assert rows and "rack:A01" not in rows and any(key for key in rows.get("pdu-A01-a", {}))
    assert points["cdu-1"] and points["A01"]


def test_values_is_reading_for_each_point() -> None:
    """`Readings.values` (the tick's pumps, a subject looked up once) gives what `reading` gives point by point:
    fresh values only, none of an offline subject, and any age of a push subject's."""
    rng = random.Random(7)
    readings = Readings(stale_after_ns=10)
    names = [f"pump{n}_running" for n in range(1, 9)]
    checked = 0
    for _ in range(500):
        now = rng.randrange(100, 200)
        subject = rng.choice(("cdu-1", "cdu-2", "cdu-3"))
        readings.update(Batch(subject, "cdu", now, [
            Sample(subject, name, rng.choice((True, False, 1, "true")), now - rng.randrange(0, 20), measurement="cdu")
            for name in rng.sample(names, rng.randrange(0, 9))]))
        for group in (readings.offline, readings.push):
            if rng.random() < 0.2:
                group.symmetric_difference_update({subject})
        asked = rng.sample(names, rng.randrange(0, 9))
        expected = [r.value for name in asked if (r := readings.reading(subject, name, now)) is not None]
        assert readings.values(subject, asked, now) == expected
        checked += bool(expected)
    assert checked > 100
