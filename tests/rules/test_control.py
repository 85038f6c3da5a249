"""Control actions inside the safety envelope, through a recording controller.

FakeController is a test double of the daemon's write routing; the driver write paths (profile checks,
protocol encoding) are tested with the drivers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dcim.rules.clock import NS
from tests.rules.rig import Rig, hall

LEAK_OFF = {"name": "leak-power-off", "rule": "cdu-leak", "delay": "30s", "target": "rack_pdus",
            "outlets": 2, "writes": [{"point": "outlet_command:{outlet}", "value": "off", "outlets": "all"}]}
MORE_FLOW = {"name": "more-flow", "rule": "cdu-flow-low", "severity": "warning", "target": "cdu",
             "writes": [{"point": "flow_setpoint_lpm", "increase_by": 50}]}
ENVELOPE = [{"kind": "pdu", "point": "outlet_command:{outlet}", "values": ["off"]},
            {"kind": "cdu", "point": "flow_setpoint_lpm", "min": 100, "max": 520}]


def control_rig(tmp_path: Path, **control: Any) -> Rig:
    return Rig(hall(tmp_path, {"control": {"armed": True, "envelope": ENVELOPE, "actions": [LEAK_OFF],
                                           **control}}))


async def second(r: Rig, *, leak: bool = False, flow: float = 450.0) -> None:
    r.clock.advance(1)
    for rack in ("A01", "A02", "B01", "B02"):
        r.feed(rack, 50, 50)
    r.cdu("cdu-1", leak=leak, flow_lpm=flow)
    r.cdu("cdu-2")
    r.service.tick()
    await asyncio.gather(*r.service._control_tasks)


async def test_confirmed_leak_switches_the_racks_outlets_off_after_the_delay(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    for _ in range(30):                   # the leak fires at the first second; 29 s later: nothing yet
        await second(r, leak=True)
    assert r.controller.writes == []
    await second(r, leak=True)
    assert sorted(r.controller.writes) == sorted(
        (f"pdu-{rack}-{side}", f"outlet_command:{n}", "off")
        for rack in ("A01", "A02") for side in "ab" for n in (1, 2))
    actions = r.service.store.actions()
    assert {a["outcome"] for a in actions} == {"executed"} and len(actions) == 8


async def test_a_leak_that_clears_before_the_delay_does_nothing(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    for _ in range(10):
        await second(r, leak=True)
    for _ in range(60):
        await second(r)
    assert r.controller.writes == []


async def test_not_armed_means_nothing_is_written(tmp_path: Path) -> None:
    r = control_rig(tmp_path, armed=False)
    for _ in range(40):
        await second(r, leak=True)
    assert r.controller.writes == []
    assert {a["outcome"] for a in r.service.store.actions()} == {"refused"}
    assert "not armed" in r.service.store.actions()[0]["detail"]


async def test_maintenance_window_locks_control_out(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    now = r.clock.now_ns()
    r.service.store.add_maintenance("A01", now, now + 3600 * NS, "cabling")
    for _ in range(40):
        await second(r, leak=True)
    assert {w[0] for w in r.controller.writes} == {"pdu-A02-a", "pdu-A02-b"}
    refused = [a for a in r.service.store.actions() if a["outcome"] == "refused"]
    assert len(refused) == 4 and all("maintenance" in a["detail"] for a in refused)


async def test_envelope_range_and_action_budget(tmp_path: Path) -> None:
    r = control_rig(tmp_path, actions=[MORE_FLOW], max_actions=1, min_interval=0)
    for _ in range(20):                   # flow 380 < 90 % of 450: warning after 10 s
        await second(r, flow=380.0)
    # 450 + 50 = 500 is inside the envelope (max 520) and goes out; the budget allows one per hour.
    assert r.controller.writes == [("cdu-1", "flow_setpoint_lpm", 500.0)]
    r.cdu("cdu-1", flow_lpm=380.0, flow_setpoint_lpm=500.0)
    for _ in range(60):                   # resolve, then a new low-flow alarm
        await second(r)
    for _ in range(20):
        await second(r, flow=300.0)
    assert len(r.controller.writes) == 1
    refused = [a for a in r.service.store.actions() if a["outcome"] == "refused"]
    assert refused and "budget" in refused[0]["detail"]


async def test_values_outside_the_envelope_are_refused(tmp_path: Path) -> None:
    r = control_rig(tmp_path, actions=[{**MORE_FLOW, "writes": [{"point": "flow_setpoint_lpm",
                                                                  "increase_by": 200}]}])
    for _ in range(20):
        await second(r, flow=380.0)
    assert r.controller.writes == []
    assert "above the envelope" in r.service.store.actions()[0]["detail"]


async def test_controller_failure_is_logged_not_raised(tmp_path: Path) -> None:
    r = control_rig(tmp_path)

    async def broken(device: str, point: str, value: object, **_: object) -> None:
        raise ConnectionError("pdu unreachable")

    r.service.control.controller = type("Broken", (), {"write": staticmethod(broken)})()
    for _ in range(32):
        await second(r, leak=True)
    actions = r.service.store.actions()
    assert actions and all(a["outcome"] == "failed" and "unreachable" in a["detail"] for a in actions)
