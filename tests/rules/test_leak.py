"""The tiered leak response on a fake clock: its stages, their order and timing, dry run and armed.
End to end through the simulators: tests/e2e/test_leak_tiers.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dcim.core.audit import AuditLog
from dcim.rules.leak import load_incidents
from tests.rules.rig import Rig, hall

ENVELOPE = [{"kind": "pdu", "point": "outlet_command:{outlet}", "values": ["off"]}]


def leak_rig(tmp_path: Path, **leak: Any) -> Rig:
    control: dict[str, Any] = {"armed": True, "min_interval": "0s", "envelope": ENVELOPE,
                               "leak": {"persist": "30s", "delay": "20s", "outlets": 2, **leak}}
    return Rig(hall(tmp_path, {"control": control}))


async def second(r: Rig, **cdu: Any) -> None:
    r.clock.advance(1)
    for rack in ("A01", "A02", "B01", "B02"):
        r.feed(rack, 50, 50)
    r.cdu("cdu-1", **cdu)
    r.cdu("cdu-2")
    r.service.tick()
    while r.service._control_tasks:
        await asyncio.gather(*list(r.service._control_tasks))


def stages(tmp_path: Path) -> list[tuple[str, str]]:
    return [(rec["origin"], rec["outcome"]) for rec in AuditLog(tmp_path / "audit.log").records()]


async def test_dry_run_is_the_default_and_writes_nothing(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path, {"control": {"armed": True, "envelope": ENVELOPE}}))
    for _ in range(200):
        await second(r, leak=True, leak_zone1=True)
    assert r.controller.writes == []
    assert stages(tmp_path) == [("leak:dry-run", "detected"), ("leak:dry-run", "confirmed"),
                                ("leak:dry-run", "planned")]
    incident = load_incidents(tmp_path)["cdu-leak/cdu-1"]
    assert incident["stage"] == "planned" and "pdu-A01-a outlet_command:1 <- off" in incident["plan"]
    r.service.store.close()


async def test_armed_two_wet_zones_confirm_at_once_and_isolation_follows_the_delay(tmp_path: Path) -> None:
    r = leak_rig(tmp_path, mode="armed")
    await second(r, leak=True, leak_zone1=True, leak_zone2=True)
    await second(r, leak=True, leak_zone1=True, leak_zone2=True)
    assert [s for _, s in stages(tmp_path)] == ["detected", "confirmed"]
    for _ in range(18):
        await second(r, leak=True, leak_zone1=True, leak_zone2=True)
    assert r.controller.writes == []
    for _ in range(2):
        await second(r, leak=True, leak_zone1=True, leak_zone2=True)
    assert sorted(r.controller.writes) == sorted(
        (f"pdu-{rack}-{side}", f"outlet_command:{n}", "off") for rack in ("A01", "A02") for side in "ab"
        for n in (1, 2))
    assert [s for _, s in stages(tmp_path)] == ["detected", "confirmed", "isolating", "isolated"]
    r.service.store.close()


async def test_a_leak_that_clears_before_confirmation_is_only_recorded(tmp_path: Path) -> None:
    r = leak_rig(tmp_path, mode="armed")
    for _ in range(10):
        await second(r, leak=True, leak_zone1=True)
    for _ in range(60):
        await second(r, leak=False)
    assert r.controller.writes == []
    assert [s for _, s in stages(tmp_path)] == ["detected", "cleared"]
    r.service.store.close()


async def test_off_records_nothing(tmp_path: Path) -> None:
    r = leak_rig(tmp_path, mode="off")
    for _ in range(100):
        await second(r, leak=True, leak_zone1=True, leak_zone2=True)
    assert stages(tmp_path) == [] and load_incidents(tmp_path) == {}
    r.service.store.close()
