"""Inhibition along the topology: a loop fault hides its racks' coolant alarms; an offline device raises
one communication alarm instead of many on stale data."""

from __future__ import annotations

from pathlib import Path

from dcim.core.events import AlarmState
from tests.rules.rig import Rig, hall


def loop_down(r: Rig, seconds: int) -> None:
    """cdu-1's pumps have failed: no flow, its racks starve; everything else healthy."""
    for _ in range(seconds):
        r.clock.advance(1)
        for rack in ("A01", "A02", "B01", "B02"):
            r.feed(rack, 50, 50)
        for rack in ("C01", "C02"):
            r.feed(rack, 15, 15)
        r.cdu("cdu-1", pump_fault=True, flow_lpm=0.0, heat_removed_kw=0.0, return_temp_c=60.0)
        r.cdu("cdu-2")
        r.service.tick()


async def test_storm_on_a_cdu_loop_notifies_the_cdu_not_every_rack(rig: Rig) -> None:
    rig.run(5)
    loop_down(rig, 600)
    firing = {a.key: a for a in rig.service.store.active()}
    # The racks' coolant alarms fire (visible, stored), held back by the loop fault ...
    for rack in ("A01", "A02"):
        assert firing[f"liquid-rack-coolant-flow/{rack}"].suppressed.startswith("inhibited by ")
        assert firing[f"liquid-rack-heat-capture/{rack}"].suppressed.startswith("inhibited by ")
    # ... and only the CDU's own alarms reach the notifier, each once.
    notified = rig.notifier.fired()
    assert sorted(notified) == ["cdu-delta-t/cdu-1", "cdu-flow-low/cdu-1", "cdu-pump-fault/cdu-1"]
    assert not any(k.endswith("cdu-2") or "B0" in k for k in firing)
    # Repair: everything resolves; only what was notified is notified resolved.
    rig.run(400)
    assert rig.service.store.active() == []
    assert sorted(rig.notifier.resolved()) == sorted(notified)


async def test_offline_device_raises_one_communication_alarm(rig: Rig) -> None:
    rig.run(5)
    rig.status("pdu-A01-a", False, "timeout")
    rig.status("cdu-1", False, "connection refused")
    for _ in range(600):                   # nothing more from those two; the rest keeps reporting
        rig.clock.advance(1)
        for rack in ("A02", "B01", "B02", "C01", "C02"):
            rig.feed(rack, 50 if rack[0] != "C" else 15, 50 if rack[0] != "C" else 15)
        rig.send("pdu-A01-b", "pdu", {"power_w": 50_000.0, "tripped": False})
        rig.cdu("cdu-2")
        rig.service.tick()
    assert sorted(rig.notifier.fired()) == ["device-offline/cdu-1", "device-offline/pdu-A01-a"]
    event = next(e for e in rig.notifier.events if e.key == "device-offline/cdu-1")
    assert "connection refused" in event.message
    # No-data alarms of the silent devices fire but stay held back.
    held = [a for a in rig.service.store.active() if not a.key.startswith("device-offline")]
    assert held and all(a.suppressed.startswith("inhibited by ") for a in held)
    rig.status("cdu-1", True)
    rig.status("pdu-A01-a", True)
    rig.run(5)
    assert sorted(rig.notifier.resolved()) == ["device-offline/cdu-1", "device-offline/pdu-A01-a"]
    assert all(e.state is AlarmState.FIRING or e.key.startswith("device-offline") for e in rig.notifier.events)


def all_but_cdu2(r: Rig) -> None:
    for rack in ("A01", "A02", "B01", "B02"):
        r.feed(rack, 50, 50)
    for rack in ("C01", "C02"):
        r.feed(rack, 15, 15)
    r.cdu("cdu-1")


async def test_restart_keeps_an_offline_device_offline_until_it_answers(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path))
    r.run(5)
    r.status("cdu-2", False, "timeout")
    r.run(200, lambda: all_but_cdu2(r))
    assert r.notifier.fired() == ["device-offline/cdu-2"]
    await r.service.store.flush_async()
    r.service.store.close()

    again = Rig(hall(tmp_path))
    again.clock.advance(300)
    again.run(5, lambda: all_but_cdu2(again))
    assert again.notifier.events == []     # the held-back no-data alarms stay held back
    assert "cdu-2" in again.service.engine.readings.offline
    again.run(2)                            # cdu-2 answers again (good data is proof of life)
    assert again.notifier.resolved() == ["device-offline/cdu-2"]
    again.service.store.close()


async def test_rules_disabled_raise_nothing_but_metrics_flow(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path, {"enabled": False}))
    r.run(3)
    r.status("cdu-1", False, "timeout")
    r.cdu("cdu-1", leak=True)
    r.run(3)
    assert r.notifier.events == [] and r.service.store.active() == []
    assert r.rack_values("A01")["power_kw"] == 100.0
