"""Alarm lifecycle: restart, acknowledge, shelve, maintenance windows, history, and the outlets."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcim.core.events import AlarmState
from dcim.rules.clock import NS
from dcim.rules.store import AlarmStore
from tests.rules.rig import Rig, hall


def leak(r: Rig, wet: bool = True) -> None:
    """One second of a healthy hall, but for cdu-1's leak sensor."""
    r.clock.advance(1)
    for rack in ("A01", "A02", "B01", "B02"):
        r.feed(rack, 50, 50)
    for rack in ("C01", "C02"):
        r.feed(rack, 15, 15)
    r.cdu("cdu-1", leak=wet)
    r.cdu("cdu-2")
    r.service.tick()


async def test_restart_with_a_firing_alarm_sends_nothing_again(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path))
    leak(r)
    assert r.notifier.fired() == ["cdu-leak/cdu-1"]
    await r.service.store.flush_async()
    r.service.store.close()

    again = Rig(hall(tmp_path))          # same state_dir: the daemon restarted
    again.clock.advance(10)
    leak(again)
    leak(again)
    assert again.notifier.events == [] and again.outlet.events == []
    assert [a.key for a in again.service.store.active()] == ["cdu-leak/cdu-1"]
    leak(again, wet=False)                # and it still resolves, once
    assert again.notifier.resolved() == ["cdu-leak/cdu-1"]
    again.service.store.close()


async def test_alarm_events_reach_outlet_database_and_history(rig: Rig) -> None:
    leak(rig)
    leak(rig, wet=False)
    assert [e.state for e in rig.outlet.events] == [AlarmState.FIRING, AlarmState.RESOLVED]
    alarm_batches = [b for b in rig.published if b.kind == "alarm"]
    assert [b.device for b in alarm_batches] == ["cdu-1", "cdu-1"]
    fields = {s.point: s.value for s in alarm_batches[0].samples}
    assert fields["state"] == "firing" and "leak" in str(fields["message"])
    assert dict(alarm_batches[0].samples[0].tags) == {"rule": "cdu-leak", "severity": "critical"}
    assert alarm_batches[0].samples[0].measurement == "alarm"
    history = rig.service.store.history()
    assert [(h.key, h.state) for h in history] == [("cdu-leak/cdu-1", AlarmState.RESOLVED),
                                                   ("cdu-leak/cdu-1", AlarmState.FIRING)]
    assert history[0].to_dict()["state"] == "resolved"


async def test_acknowledge_from_another_process_reaches_the_daemon(rig: Rig, tmp_path: Path) -> None:
    leak(rig)
    await rig.service.store.flush_async()
    cli = AlarmStore(tmp_path / "alarms.db", clock=rig.clock)   # what `dcim alarms ack` opens
    rig.clock.advance(1)
    cli.acknowledge("cdu-leak/cdu-1", "alice", "on it")
    cli.close()
    await rig.service.store.flush_async()
    record = rig.service.store.get("cdu-leak/cdu-1")
    assert record.acknowledged and record.ack_by == "alice" and record.ack_comment == "on it"
    # The notifier hears of it (it stops the reminders), and so does MQTT.
    assert rig.notifier.events[-1].acknowledged and rig.notifier.events[-1].state is AlarmState.FIRING
    assert rig.outlet.events[-1].acknowledged
    leak(rig)                             # the engine's later writes keep the acknowledgement
    await rig.service.store.flush_async()
    assert AlarmStore(tmp_path / "alarms.db").get("cdu-leak/cdu-1").acknowledged


async def test_shelve_holds_back_notifications_until_it_expires(rig: Rig) -> None:
    rig.clock.advance(1)
    rig.cdu("cdu-2", leak=True)
    assert rig.notifier.fired() == ["cdu-leak/cdu-2"]
    rig.service.store.shelve("cdu-leak/cdu-2", rig.clock.now_ns() + 600 * NS, "bob")
    rig.cdu("cdu-1", leak=True)           # another alarm: not shelved
    assert rig.notifier.fired() == ["cdu-leak/cdu-2", "cdu-leak/cdu-1"]
    rig.service.tick()
    assert rig.service.store.get("cdu-leak/cdu-2").suppressed == "shelved"
    rig.clock.advance(601)
    rig.service.tick()
    record = rig.service.store.get("cdu-leak/cdu-2")
    assert record.suppressed == "" and record.shelved_until_ns is None


async def test_maintenance_window_silences_new_alarms_then_lets_them_through(rig: Rig) -> None:
    now = rig.clock.now_ns()
    rig.service.store.add_maintenance("cdu-1", now, now + 300 * NS, "pump swap")
    leak(rig)
    assert rig.notifier.events == []
    assert rig.outlet.fired() == ["cdu-leak/cdu-1"]     # still visible: MQTT, database, store
    assert rig.service.store.get("cdu-leak/cdu-1").suppressed == "maintenance"
    for _ in range(300):
        leak(rig)
    assert rig.notifier.fired() == ["cdu-leak/cdu-1"]   # window over, still leaking: now it pages
    leak(rig, wet=False)
    assert rig.notifier.resolved() == ["cdu-leak/cdu-1"]


async def test_resolved_while_silenced_is_never_notified(rig: Rig) -> None:
    now = rig.clock.now_ns()
    rig.service.store.add_maintenance("A01", now, now + 300 * NS, "work on the rack")
    rig.clock.advance(1)
    rig.feed("A01", 80, 80)               # 160 kW of 150
    for _ in range(40):
        rig.clock.advance(1)
        rig.feed("A01", 80, 80)
        rig.service.tick()
    assert "liquid-rack-power-budget/A01" in rig.outlet.fired()
    for _ in range(70):
        rig.clock.advance(1)
        rig.feed("A01", 50, 50)
        rig.service.tick()
    assert "liquid-rack-power-budget/A01" in rig.outlet.resolved()
    assert rig.notifier.events == []


async def test_unknown_or_inactive_alarm_operations_fail_clearly(rig: Rig) -> None:
    from dcim.rules.store import AlarmNotActive, AlarmNotFound

    with pytest.raises(AlarmNotFound):
        rig.service.store.acknowledge("nope/x", "u")
    leak(rig)
    leak(rig, wet=False)
    await rig.service.store.flush_async()
    with pytest.raises(AlarmNotActive):
        rig.service.store.acknowledge("cdu-leak/cdu-1", "u")
    with pytest.raises(ValueError):
        rig.service.store.add_maintenance("A01", 10, 5, "backwards")


async def test_run_ticks_on_the_clock_and_flushes_when_cancelled(tmp_path: Path) -> None:
    import asyncio

    from tests.helpers import wait_until

    r = Rig(hall(tmp_path))
    task = asyncio.create_task(r.service.run(), name="rules")
    await wait_until(lambda: r.clock._sleepers, timeout=60, message="service sleeping on the clock")
    r.cdu("cdu-1", leak=True)
    assert r.notifier.fired() == ["cdu-leak/cdu-1"]
    r.published.clear()
    r.clock.advance(1)                     # the next tick computes rack metrics
    await wait_until(lambda: any(b.kind == "rack" for b in r.published), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert AlarmStore(tmp_path / "alarms.db").get("cdu-leak/cdu-1").state is AlarmState.FIRING


async def test_maintenance_on_a_cdu_covers_its_racks_coolant_alarms_not_their_power(rig: Rig) -> None:
    now = rig.clock.now_ns()
    rig.service.store.add_maintenance("cdu-1", now, now + 3600 * NS, "filter change")
    for _ in range(60):                    # A01 over budget, and cdu-1's loop short of flow
        rig.clock.advance(1)
        rig.feed("A01", 80, 80)
        for rack in ("A02", "B01", "B02"):
            rig.feed(rack, 50, 50)
        for rack in ("C01", "C02"):
            rig.feed(rack, 15, 15)
        rig.cdu("cdu-1", flow_lpm=200.0)
        rig.cdu("cdu-2")
        rig.service.tick()
    held = {a.key: a.suppressed for a in rig.service.store.active()}
    assert held["liquid-rack-coolant-flow/A02"] == "maintenance"
    assert held["cdu-flow-low/cdu-1"] == "maintenance"
    assert held["liquid-rack-power-budget/A01"] == ""
    assert "liquid-rack-power-budget/A01" in rig.notifier.fired()
    assert not any("flow" in key for key in rig.notifier.fired())
