"""The tiered leak response end to end: the daemon on real drivers, the CDU over Modbus and the PDU over SNMP
served by the project's simulators. Armed: detected, confirmed by a second wet zone, the rack's outlets
switched off after the delay, verified. Dry run (a new site's default): detected, confirmed by persistence,
planned, and nothing reaches any simulator. Each stage is in the audit trail and in `dcim alarms`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcim.app.config import Config
from dcim.core.audit import AuditLog
from dcim.rules.leak import load_incidents
from tests.e2e.harness import simulators
from tests.helpers import wait_until
from tests.writes.rig import CountingPlant, dcim, hall, load, running

ALARM = "cdu-leak/cdu-1"


def stage(config: Config) -> str:
    return str(load_incidents(Path(config.state_dir)).get(ALARM, {}).get("stage", ""))


def audit(config: Config) -> list[dict[str, Any]]:
    return list(AuditLog(Path(config.state_dir) / "audit.log").records())


async def test_armed_detected_confirmed_by_a_second_zone_then_isolated(tmp_path: Path) -> None:
    control = {"armed": True, "min_interval": "0s",
               "envelope": [{"kind": "pdu", "point": "outlet_command:{outlet}", "values": ["off"]}],
               "leak": {"mode": "armed", "zones": 2, "persist": "1h", "delay": "1s", "outlets": 2}}
    path = hall(tmp_path, control=control)
    config = load(path)
    plant = CountingPlant(config)
    async with simulators(config, plant), running(config):
        plant.inject("cdu-1", "leak", zone=1)
        await wait_until(lambda: stage(config) == "detected", timeout=60, message="leak detected")
        plant.inject("cdu-1", "leak", zones=[1, 2])          # it spreads: a second zone is wet
        await wait_until(lambda: stage(config) not in ("detected", "confirmed", "isolating"), timeout=60,
                         message="leak isolated")
        await wait_until(lambda: any(r["outcome"] == "isolated" for r in audit(config)), timeout=60,
                         message="isolated stage audited")
    assert stage(config) == "isolated"
    assert sorted(plant.received) == [("pdu-1", "outlet:1", False), ("pdu-1", "outlet:2", False)]
    records = audit(config)
    stages = [(r["origin"], r["outcome"]) for r in records if r["point"] == "leak_response"]
    assert stages == [("leak:armed", s) for s in ("detected", "confirmed", "isolating", "isolated")]
    confirmed = next(r for r in records if r["outcome"] == "confirmed")
    assert "2 leak zones wet" in confirmed["reason"] and "pdu-1 outlet_command:1 <- off" in confirmed["reason"]
    writes = [(r["origin"], r["point"], r["outcome"]) for r in records if r["point"] != "leak_response"]
    assert sorted(writes) == [("rule:leak-isolate", "outlet_command:1", "verified"),
                              ("rule:leak-isolate", "outlet_command:2", "verified")]
    code, out, err = await dcim("alarms", "-c", str(path))
    assert code == 0, err
    assert "leak response: isolated (armed)" in out and ALARM in out


async def test_a_new_site_plans_in_dry_run_and_writes_nothing(tmp_path: Path) -> None:
    # Nothing about control or the leak response configured but how long to wait: the defaults.
    path = hall(tmp_path, control={"armed": False, "leak": {"persist": "2s", "delay": "1s"}})
    config = load(path)
    assert config.rules.control.leak.mode == "dry-run"
    plant = CountingPlant(config)
    async with simulators(config, plant), running(config):
        plant.inject("cdu-1", "leak", zone=3)
        await wait_until(lambda: stage(config) == "planned", timeout=60, message="isolation planned")
        # The audit trail is written off the loop, after the stage: wait for the record, not a time.
        await wait_until(lambda: any(r["outcome"] == "planned" for r in audit(config)), timeout=60,
                         message="planned stage audited")
    assert plant.received == []
    records = audit(config)
    assert [(r["origin"], r["outcome"]) for r in records] == [
        ("leak:dry-run", s) for s in ("detected", "confirmed", "planned")]
    assert "persisted 2 s" in records[1]["reason"]
    assert "dry run, nothing written" in records[2]["reason"] and "pdu-1 outlet_command:1 <- off" in records[2][
        "reason"]
    code, out, err = await dcim("alarms", "-c", str(path))
    assert code == 0, err
    assert "leak response: planned (dry-run)" in out
    code, out, err = await dcim("audit", "-c", str(path), "--verify")
    assert code == 0, out + err
