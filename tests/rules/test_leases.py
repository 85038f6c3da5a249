"""Setpoint leases on a fake clock: renewed while the alarm fires, restored when it clears, when the lease
runs out unrenewed (a daemon that was not running), and retried when the write path says no.

The controller here is a small stateful double of the daemon's write path (it returns a WriteResult with
the old value, as rules.writes.WriteGuard does); the guard itself and the real daemon are exercised by
tests/e2e/test_leak_tiers.py and tests/writes/test_leases_daemon.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dcim.core.samples import Value
from dcim.rules.clock import NS, FakeClock
from dcim.rules.writes import WriteRefused, WriteResult
from tests.rules.rig import Rig, hall

FLOW_DOWN = {"name": "leak-flow-down", "rule": "cdu-leak", "target": "cdu", "lease": "60s",
             "writes": [{"point": "flow_setpoint_lpm", "value": 300}]}
ENVELOPE = [{"kind": "cdu", "point": "flow_setpoint_lpm", "min": 100, "max": 900}]


@dataclass
class Device:
    """What the write path would do: remember the value, hand back the old one; refuse while told to."""

    values: dict[tuple[str, str], Value] = field(default_factory=dict)
    writes: list[tuple[str, str, Value, str]] = field(default_factory=list)
    refuse: str = ""

    async def write(self, device: str, point: str, value: Value, *, origin: str = "rule") -> WriteResult:
        if self.refuse:
            raise WriteRefused(self.refuse)
        old = self.values.get((device, point))
        self.values[(device, point)] = value
        self.writes.append((device, point, value, origin))
        return WriteResult(device, point, value, origin, "verified", old=old, new=value)


def lease_rig(tmp_path: Path, **action: Any) -> tuple[Rig, Device]:
    rules = {"control": {"armed": True, "min_interval": "0s", "envelope": ENVELOPE,
                         "actions": [{**FLOW_DOWN, **action}], "leak": {"mode": "off"}}}
    r = Rig(hall(tmp_path, rules))
    device = Device({("cdu-1", "flow_setpoint_lpm"): 450.0})
    r.service.control.controller = device
    return r, device


async def second(r: Rig, *, leak: bool) -> None:
    r.clock.advance(1)
    for rack in ("A01", "A02", "B01", "B02"):
        r.feed(rack, 50, 50)
    r.cdu("cdu-1", leak=leak)
    r.cdu("cdu-2")
    r.service.tick()
    while r.service._control_tasks:
        await asyncio.gather(*list(r.service._control_tasks))


def leases_file(tmp_path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((tmp_path / "leases.json").read_text())
    return data


async def test_the_prior_value_returns_when_the_condition_clears(tmp_path: Path) -> None:
    r, device = lease_rig(tmp_path)
    for _ in range(200):                  # more than three lease lengths: renewed all along
        await second(r, leak=True)
    assert device.writes == [("cdu-1", "flow_setpoint_lpm", 300, "rule:leak-flow-down")]
    [lease] = leases_file(tmp_path)
    assert (lease["prior"], lease["value"], lease["ending"]) == (450.0, 300, "")
    assert lease["expires_ns"] > r.clock.now_ns()
    for _ in range(3):
        await second(r, leak=False)
    assert device.writes[1:] == [("cdu-1", "flow_setpoint_lpm", 450.0, "lease:leak-flow-down")]
    assert device.values[("cdu-1", "flow_setpoint_lpm")] == 450.0
    assert leases_file(tmp_path) == []
    restored = [a for a in r.service.store.actions() if a["outcome"] == "restored"]
    assert len(restored) == 1 and "condition cleared" in restored[0]["detail"]
    r.service.store.close()


async def test_a_lease_that_ran_out_while_no_daemon_renewed_it_is_restored_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r, device = lease_rig(tmp_path)
    for _ in range(5):
        await second(r, leak=True)
    assert device.values[("cdu-1", "flow_setpoint_lpm")] == 300
    await asyncio.to_thread(r.service.store.flush)
    r.service.store.close()
    # The daemon is gone for longer than the lease; the leak still shows, the alarm is still firing in the
    # store: the lease ended all the same, and the next daemon's first tick restores the prior value.
    later = r.clock.now_ns() + 120 * NS
    monkeypatch.setattr("tests.rules.rig.FakeClock", lambda: FakeClock(later))
    again = Rig(hall(tmp_path, r.config.rules.model_dump(by_alias=True)))
    again.service.control.controller = device
    await second(again, leak=True)
    assert device.writes[-1] == ("cdu-1", "flow_setpoint_lpm", 450.0, "lease:leak-flow-down")
    assert leases_file(tmp_path) == []
    again.service.store.close()


async def test_a_refused_restore_stays_on_record_and_is_tried_again(tmp_path: Path) -> None:
    r, device = lease_rig(tmp_path)
    for _ in range(3):
        await second(r, leak=True)
    device.refuse = "maintenance window on A01 (cabling)"
    for _ in range(3):
        await second(r, leak=False)
    [lease] = leases_file(tmp_path)
    assert (lease["ending"], lease["attempts"]) == ("condition cleared", 1)
    device.refuse = ""
    for _ in range(12):                   # the first retry comes 10 s later
        await second(r, leak=False)
    assert device.writes[-1] == ("cdu-1", "flow_setpoint_lpm", 450.0, "lease:leak-flow-down")
    assert leases_file(tmp_path) == []
    r.service.store.close()


async def test_without_lease_the_value_stays(tmp_path: Path) -> None:
    r, device = lease_rig(tmp_path, lease=None)
    for _ in range(3):
        await second(r, leak=True)
    for _ in range(100):
        await second(r, leak=False)
    assert device.writes == [("cdu-1", "flow_setpoint_lpm", 300, "rule:leak-flow-down")]
    assert not (tmp_path / "leases.json").exists()
    r.service.store.close()
