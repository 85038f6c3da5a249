"""Each rule kind against the fake clock: pending, firing, hysteresis, clear delay, no-data, rate, state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from dcim.core.events import AlarmState, Severity
from tests.rules.rig import Rig, hall

NO_PACKS = {"air-rack": False, "liquid-rack": False, "cdu-loop": False, "chiller": False}


def rig_for(tmp_path: Path, *rules: dict[str, Any]) -> Rig:
    return Rig(hall(tmp_path, {"packs": NO_PACKS, "rules": list(rules)}))


SUPPLY = {"name": "supply-hot", "scope": {"devices": {"kind": "cdu"}}, "metric": "supply_temp_c",
          "warning": "supply_temp_setpoint_c + 2", "critical": "supply_temp_setpoint_c + 5",
          "for": "30s", "hysteresis": 0.5, "clear_after": "1m"}


def drive(r: Rig, seconds: int, **values: Any) -> None:
    for _ in range(seconds):
        r.clock.advance(1)
        r.cdu("cdu-1", **values)
        r.service.tick()


async def test_pending_then_firing_after_for(tmp_path: Path) -> None:
    r = rig_for(tmp_path, SUPPLY)
    drive(r, 5, supply_temp_c=32.0)
    drive(r, 30, supply_temp_c=34.5)   # setpoint 32 + 2 < 34.5: first seen, then pending 29 s
    assert r.notifier.events == []
    pending = r.service.store.record("supply-hot/cdu-1")
    assert pending is not None and pending.state is AlarmState.PENDING
    drive(r, 1, supply_temp_c=34.5)
    assert r.notifier.fired() == ["supply-hot/cdu-1"]
    event = r.notifier.events[0]
    assert event.severity is Severity.WARNING and event.threshold == 34.0 and event.value == 34.5
    assert event.labels["cdu"] == "cdu-1" and event.labels["site"] == "hall-1"


async def test_condition_that_clears_while_pending_never_fires(tmp_path: Path) -> None:
    r = rig_for(tmp_path, SUPPLY)
    drive(r, 20, supply_temp_c=34.5)
    drive(r, 1, supply_temp_c=33.0)
    drive(r, 20, supply_temp_c=34.5)   # the pending period starts again
    assert r.notifier.events == []
    assert r.service.store.record("supply-hot/cdu-1") is not None


async def test_escalates_to_critical_and_back(tmp_path: Path) -> None:
    r = rig_for(tmp_path, SUPPLY)
    drive(r, 31, supply_temp_c=34.5)
    drive(r, 31, supply_temp_c=38.0)   # + 6 K: critical after its own 30 s
    assert [e.severity for e in r.notifier.events] == [Severity.WARNING, Severity.CRITICAL]
    drive(r, 60, supply_temp_c=35.0)   # back to warning level: first seen, then the clear delay
    assert len(r.notifier.events) == 2
    drive(r, 1, supply_temp_c=35.0)
    assert [e.severity for e in r.notifier.events][-1] is Severity.WARNING
    assert all(e.state is AlarmState.FIRING for e in r.notifier.events)


async def test_hysteresis_and_clear_delay(tmp_path: Path) -> None:
    r = rig_for(tmp_path, SUPPLY)
    drive(r, 31, supply_temp_c=34.5)
    assert r.notifier.fired() == ["supply-hot/cdu-1"]
    drive(r, 120, supply_temp_c=33.8)  # below 34 but not below 34 - 0.5: still firing
    assert r.notifier.resolved() == []
    drive(r, 60, supply_temp_c=33.4)   # clear: first seen, then 59 s of the clear delay
    assert r.notifier.resolved() == []
    drive(r, 1, supply_temp_c=33.4)
    assert r.notifier.resolved() == ["supply-hot/cdu-1"]
    assert r.service.store.active() == []


async def test_noisy_value_near_threshold_does_not_flap(tmp_path: Path) -> None:
    rng = random.Random(7)
    r = rig_for(tmp_path, {**SUPPLY, "for": "10s", "clear_after": "20s", "hysteresis": 0.5})
    # Mean right on the warning threshold (34.0), noise +-0.3: would cross it every few samples.
    for _ in range(600):
        r.clock.advance(1)
        r.cdu("cdu-1", supply_temp_c=34.0 + rng.uniform(-0.3, 0.3))
        r.service.tick()
    assert len(r.notifier.events) <= 1
    assert r.notifier.resolved() == []


async def test_missing_data_holds_state(tmp_path: Path) -> None:
    r = rig_for(tmp_path, SUPPLY)
    drive(r, 31, supply_temp_c=34.5)
    r.clock.advance(300)               # nothing arrives: stale values judge nothing
    r.service.tick()
    assert r.notifier.resolved() == []
    assert [a.key for a in r.service.store.active()] == ["supply-hot/cdu-1"]


async def test_no_data_rule(tmp_path: Path) -> None:
    r = rig_for(tmp_path, {"name": "flow", "scope": {"devices": {"ids": ["cdu-1"]}}, "metric": "flow_lpm",
                           "when": "below", "warning": 100, "no_data": {"after": "1m", "severity": "critical"}})
    drive(r, 5)
    for _ in range(59):
        r.clock.advance(1)
        r.service.tick()
    assert r.notifier.events == []
    r.clock.advance(1)
    r.service.tick()
    assert r.notifier.fired() == ["flow.no_data/cdu-1"]
    assert r.notifier.events[0].severity is Severity.CRITICAL
    drive(r, 1)
    assert r.notifier.resolved() == ["flow.no_data/cdu-1"]


async def test_rate_of_change_rule(tmp_path: Path) -> None:
    r = rig_for(tmp_path, {"name": "supply-rising", "scope": {"devices": {"ids": ["cdu-1"]}},
                           "metric": "supply_temp_c", "kind": "rate", "window": "1m", "per": "1m",
                           "warning": 2.0, "clear_after": "30s"})
    drive(r, 120, supply_temp_c=32.0)
    temp = 32.0
    for _ in range(45):                # +3 K per minute
        temp += 0.05
        drive(r, 1, supply_temp_c=temp)
    assert r.notifier.fired() == ["supply-rising/cdu-1"]
    assert r.notifier.events[0].value is not None and r.notifier.events[0].value > 2.0
    drive(r, 120, supply_temp_c=temp)  # flat again
    assert r.notifier.resolved() == ["supply-rising/cdu-1"]


async def test_state_rule_fires_at_once(tmp_path: Path) -> None:
    r = rig_for(tmp_path, {"name": "leak", "scope": {"devices": {"kind": "cdu"}}, "metric": "leak",
                           "kind": "state", "match": [True], "severity": "critical"})
    drive(r, 3)
    r.cdu("cdu-1", leak=True)          # judged within the batch, no tick needed
    assert r.notifier.fired() == ["leak/cdu-1"]
    drive(r, 1, leak=False)
    assert r.notifier.resolved() == ["leak/cdu-1"]


async def test_relative_threshold_and_per_rack_override(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path, {"packs": NO_PACKS, "rules": [
        {"name": "budget", "scope": {"racks": {"cooling": "liquid"}}, "metric": "power_kw",
         "warning": "80% of power_budget_kw", "overrides": {"A02": {"warning": "95% of power_budget_kw"}}},
    ]}))
    for _ in range(2):
        r.clock.advance(1)
        for rack in ("A01", "A02", "B01", "B02"):
            r.feed(rack, 64, 64)       # 128 kW of 150: 85 %
        r.service.tick()
    assert sorted(r.notifier.fired()) == ["budget/A01", "budget/B01", "budget/B02"]
    assert r.notifier.events[0].threshold == 120.0
