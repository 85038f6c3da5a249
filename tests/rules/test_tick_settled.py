"""The tick skips a rule judged clear on its last values (a timeless kind, no alarm, no timer) until one of
its points has a new value, and a batch that repeats those values skips it too: the alarms raised are
exactly those of an engine that judges every rule on every tick and every batch, over a long random run
with pending periods, hysteresis, clear delays, gaps and outages."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dcim.core.events import AlarmState
from dcim.rules.kinds import Assessment, Condition
from dcim.rules.kinds.rate import RateCondition
from dcim.rules.kinds.state import StateCondition
from dcim.rules.kinds.threshold import LimitCondition
from tests.rules.rig import Rig, hall

RULES = [
    {"name": "supply-hot", "scope": {"devices": {"kind": "cdu"}}, "metric": "supply_temp_c",
     "warning": "supply_temp_setpoint_c + 2", "critical": "supply_temp_setpoint_c + 5",
     "for": "5s", "hysteresis": 0.5, "clear_after": "10s"},
    {"name": "supply-rising", "scope": {"devices": {"kind": "cdu"}}, "metric": "supply_temp_c",
     "kind": "rate", "window": "20s", "per": "1m", "warning": 6},
    {"name": "pump", "scope": {"devices": {"kind": "cdu"}}, "metric": "pump_fault", "kind": "state",
     "match": [True]},
]


def run(tmp_path: Path, seed: int, quantum: float = 0.01) -> tuple[list[tuple[str, AlarmState, str, int]], Rig]:
    """400 s of a random walk: supply temperature (read to `quantum`: a coarse one repeats values, as a
    register in tenths of a degree does), a flapping pump fault, rack power near the budget, gaps in the data
    (values going stale) and the device going offline and back."""
    r = Rig(hall(tmp_path, {"rules": RULES}))
    rng = random.Random(seed)
    temp = {"cdu-1": 32.0, "cdu-2": 32.0}
    pump = {"cdu-1": False, "cdu-2": False}
    offline: set[str] = set()
    for _ in range(400):
        r.clock.advance(1)
        for cdu in ("cdu-1", "cdu-2"):
            temp[cdu] = min(42.0, max(28.0, temp[cdu] + rng.uniform(-0.8, 0.9)))
            if rng.random() < 0.03:
                pump[cdu] = not pump[cdu]
            if cdu in offline:
                if rng.random() < 0.2:
                    offline.discard(cdu)
                    r.status(cdu, True)
                else:
                    continue
            elif rng.random() < 0.01:
                offline.add(cdu)
                r.status(cdu, False, "timed out")
                continue
            if rng.random() < 0.08:
                continue  # a gap: the values go stale if it lasts
            r.cdu(cdu, supply_temp_c=round(round(temp[cdu] / quantum) * quantum, 2), pump_fault=pump[cdu],
                  flow_lpm=rng.choice((450.0, 450.0, 450.0, 300.0)))
        for rack in ("A01", "A02", "B01", "B02"):
            kw = rng.uniform(60, 80)
            r.feed(rack, kw, kw)
        for rack in ("C01", "C02"):
            r.feed(rack, 15, 15)
        r.service.tick()
    events = [(e.key, e.state, str(e.severity), e.ts_ns) for e in r.notifier.events]
    return events, r


@pytest.mark.parametrize("quantum", [0.01, 0.5])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_skipping_settled_rules_raises_exactly_the_same_alarms(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, quantum: float) -> None:
    """The tick skips a settled rule with no new value; a batch skips one whose values it repeats."""
    skipping, rig = run(tmp_path / "skipping", seed, quantum)
    assert rig.service.engine.skipped > 0, "nothing was skipped: the test shows nothing"
    for cls in (LimitCondition, RateCondition, StateCondition):
        monkeypatch.setattr(cls, "timeless", False)
    judging, every = run(tmp_path / "judging", seed, quantum)
    assert every.service.engine.skipped == 0
    assert {key for key, state, *_ in judging if state is AlarmState.FIRING}, "no alarm fired: nothing shown"
    assert skipping == judging
    assert rig.service.engine.evaluations < every.service.engine.evaluations


async def test_a_settled_rule_fires_on_its_next_value(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path, {"rules": [{**RULES[0], "for": "0s"}]}))
    for _ in range(3):
        r.clock.advance(1)
        r.cdu("cdu-1")
        r.service.tick()
    skipped = r.service.engine.skipped
    r.clock.advance(1)
    r.service.tick()
    assert r.service.engine.skipped > skipped  # judged clear, nothing new: not judged again
    r.cdu("cdu-1", supply_temp_c=40.0)
    assert r.notifier.fired() == ["supply-hot/cdu-1"]


class _Clocked(LimitCondition):
    """An installed kind built on LimitCondition whose verdict changes with time alone."""

    def assess(self, now_ns: int) -> Assessment | None:
        return Assessment(0.0, [(s, 1.0, 0.0) for s in self.thresholds]) if now_ns > 10 * 10**9 else None


def test_the_flag_is_not_inherited() -> None:
    assert LimitCondition.timeless and RateCondition.timeless and StateCondition.timeless
    assert not Condition.timeless
    assert not _Clocked.timeless
