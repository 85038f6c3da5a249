"""A reload (SIGHUP) rebuilds the control actions for the new configuration, and what the running ones were
doing goes on: an action waiting for its delay still runs, the envelope's budget and intervals are not
reset, refusals still reach the audit trail, and a leak response in progress is the same incident."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcim.core.topology import Topology
from tests.rules.rig import Rig, hall, make_config
from tests.rules.test_control import ENVELOPE, LEAK_OFF, MORE_FLOW, control_rig, second


async def reload(r: Rig, tmp_path: Path, **control: Any) -> None:
    config = make_config(hall(tmp_path, {"control": {"armed": True, "envelope": ENVELOPE, **control}}))
    await r.service.reload_async(config, Topology(config))


async def test_an_action_waiting_for_its_delay_still_runs_after_a_reload(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    for _ in range(10):  # the leak fires at the first second; its action is due 30 s later
        await second(r, leak=True)
    assert r.controller.writes == []
    await reload(r, tmp_path, actions=[LEAK_OFF])
    for _ in range(19):
        await second(r, leak=True)
    assert r.controller.writes == [], "not before its delay"
    for _ in range(3):
        await second(r, leak=True)
    assert len(r.controller.writes) == 8 and {w[2] for w in r.controller.writes} == {"off"}


async def test_an_action_the_new_file_removed_does_not_run(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    for _ in range(10):
        await second(r, leak=True)
    await reload(r, tmp_path, actions=[])
    for _ in range(40):
        await second(r, leak=True)
    assert r.controller.writes == []


async def test_a_reload_does_not_reset_the_envelopes_budget(tmp_path: Path) -> None:
    r = control_rig(tmp_path, actions=[MORE_FLOW], max_actions=1, min_interval=0)
    for _ in range(20):  # flow 380 < 90 % of 450: warning after 10 s
        await second(r, flow=380.0)
    assert r.controller.writes == [("cdu-1", "flow_setpoint_lpm", 500.0)]
    await reload(r, tmp_path, actions=[MORE_FLOW], max_actions=1, min_interval=0)
    r.cdu("cdu-1", flow_lpm=380.0, flow_setpoint_lpm=500.0)
    for _ in range(60):  # resolve, then a new low-flow alarm
        await second(r)
    for _ in range(20):
        await second(r, flow=300.0)
    assert len(r.controller.writes) == 1, "one an hour, reload or not"
    refused = [a for a in r.service.store.actions() if a["outcome"] == "refused"]
    assert refused and "budget" in refused[0]["detail"]


async def test_refusals_still_reach_the_audit_trail_and_the_leak_response_carries_on(tmp_path: Path) -> None:
    r = control_rig(tmp_path)
    told: list[tuple[str, ...]] = []
    r.service.control.on_refused = lambda *a: told.append(tuple(map(str, a)))  # as the daemon sets it, once
    leak, leases = r.service.control.leak, r.service.control.leases
    await reload(r, tmp_path, actions=[LEAK_OFF], armed=False)
    assert r.service.control.leak is leak, "the same responder: its incidents and unwritten stages"
    assert leases is not None and r.service.control.leases is leases, "the same book: restores under way"
    assert leak.control is r.service.control and leak.config is r.service.control.config.leak
    for _ in range(40):
        await second(r, leak=True)
    assert r.controller.writes == []
    assert told and all("not armed" in t[-1] for t in told)


async def test_an_action_whose_device_is_gone_does_not_run(tmp_path: Path) -> None:
    r = control_rig(tmp_path, actions=[MORE_FLOW])
    for _ in range(5):  # low flow on cdu-1 from the first second: the warning fires after 10 s
        await second(r, flow=380.0)
    raw = hall(tmp_path, {"control": {"armed": True, "envelope": ENVELOPE, "actions": [{**MORE_FLOW, "delay": "20s"}]}})
    await r.service.reload_async(make_config(raw), Topology(make_config(raw)))
    for _ in range(8):
        await second(r, flow=380.0)
    assert r.controller.writes == [] and r.service.control._scheduled, "waiting: delay 20 s now"
    raw["devices"] = [d for d in raw["devices"] if d["id"] != "cdu-1"]
    raw["rooms"][0]["rows"][0]["racks"] = [k for k in raw["rooms"][0]["rows"][0]["racks"] if k["cdu"] != "cdu-1"]
    await r.service.reload_async(make_config(raw), Topology(make_config(raw)))
    assert r.service.control._scheduled == []
