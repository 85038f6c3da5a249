"""`dcim write` as a user runs it: through a running daemon (`dcim run` as a process, its HTTP API with the
token), or `--direct` when none runs; `--dry-run`; confirmation of writes that stop equipment."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest

from dcim.app.instance import InstanceLock
from dcim.core.audit import AuditLog
from tests.e2e.harness import DaemonProcess, simulators
from tests.helpers import wait_until
from tests.writes.rig import CountingPlant, dcim, hall, load

pytestmark = pytest.mark.e2e


async def daemon_answers(port: int) -> bool:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/healthz") as response:
        # Not only up: every device polled once, so the guard reads back through live connections.
        body = await response.json()
        return all(d["online"] for d in body["devices"].values())


async def test_cli_writes_go_through_the_running_daemon(tmp_path: Path) -> None:
    path = hall(tmp_path, http=True)
    config = load(path)
    plant = CountingPlant(config)
    audit = AuditLog(Path(config.state_dir) / "audit.log")
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            await wait_until(lambda: daemon_answers(config.http.port), timeout=60, ignore=(aiohttp.ClientError,),
                             message="daemon up with every device online")
            code, out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450",
                                        "--user", "alice")
            assert code == 0, err + daemon.log()
            assert "verified" in out and "reads back 450" in out
            assert plant.received == [("cdu-1", "flow_setpoint_lpm", 450.0)]

            # A stop without --yes and without a terminal: refused, nothing sent, and recorded.
            code, _out, err = await dcim("write", "-c", str(path), "pdu-1", "outlet_command:3", "off")
            assert code == 1 and "stdin is not a terminal" in err and "needs confirmation" in err
            # A dry run: what would be sent, nothing sent.
            code, out, err = await dcim("write", "-c", str(path), "pdu-1", "outlet_command:3", "off", "--dry-run")
            assert code == 0, err
            assert "Would send 2 to SET 1.3.6.1.4.1.318.1.1.26.9.2.4.1.5.3" in out
            assert len(plant.received) == 1
            # --direct while a daemon answers: refused, the envelope is not bypassed.
            code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "supply_temp_setpoint_c", "30",
                                         "--direct")
            assert code == 2 and "a daemon answers" in err
            # Confirmed: the outlet goes off, verified by its state.
            code, out, err = await dcim("write", "-c", str(path), "pdu-1", "outlet_command:3", "off", "--yes")
            assert code == 0, err + daemon.log()
            assert "verified (was on, reads back off)" in out
            assert plant.received[1:] == [("pdu-1", "outlet:3", False)]
            assert daemon.stop() == 0, daemon.log()
    records = list(audit.records())
    assert [(r["point"], r["outcome"]) for r in records] == [
        ("flow_setpoint_lpm", "verified"), ("outlet_command:3", "refused"), ("outlet_command:3", "dry-run"),
        ("outlet_command:3", "verified")]
    assert records[0]["origin"].startswith("api:alice@token:") and records[0]["old"] is not None
    assert audit.verify() == (4, None)


async def test_without_a_daemon_only_direct_writes_and_with_the_same_checks(tmp_path: Path) -> None:
    path = hall(tmp_path)
    config = load(path)
    plant = CountingPlant(config)
    async with simulators(config, plant):
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450")
        assert code == 2 and "no daemon answers" in err and "--direct" in err
        code, out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450", "--direct",
                                    "--dry-run")
        assert code == 0 and "dry run, nothing sent. Would send 450 to holding 101 (unit 1)" in out, err
        assert plant.received == []
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "4500", "--direct")
        assert code == 1 and "outside the allowed range" in err
        code, out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450", "--direct")
        assert code == 0 and "verified" in out, err
        assert plant.received == [("cdu-1", "flow_setpoint_lpm", 450.0)]
    code, out, err = await dcim("audit", "-c", str(path), "--verify", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in lines] == ["dry-run", "refused", "verified"]
    assert {r["origin"].split(":")[0] for r in lines} == {"cli"}
    assert "3 records, chain intact" in err


async def test_out_of_range_to_an_unreachable_device_reports_the_range(tmp_path: Path) -> None:
    path = hall(tmp_path)  # no simulators: nothing listens
    code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "5000", "--direct")
    assert code == 1 and "outside the allowed range" in err and "connect" not in err


async def test_direct_is_refused_while_a_daemon_holds_the_state_dir(tmp_path: Path) -> None:
    """A daemon whose HTTP API does not answer (here: none configured) still holds its state_dir's instance
    lock: `--direct` then refuses to become a second writer beside it, and sends nothing."""
    path = hall(tmp_path)
    config = load(path)
    plant = CountingPlant(config)
    lock = InstanceLock(config.state_dir)
    lock.acquire()  # what a running `dcim run` on this state_dir holds
    try:
        async with simulators(config, plant):
            code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450", "--direct")
    finally:
        lock.release()
    assert code == 2 and "another dcim instance" in err and "writes go through that daemon" in err, err
    assert plant.received == []


async def test_direct_honours_a_maintenance_window_with_the_rules_off(tmp_path: Path) -> None:
    """`rules.enabled: false` takes the alarms away, not the maintenance windows: the direct path refuses a
    write they cover, as the daemon does (it used to ignore the alarm store, and the windows in it)."""
    from dcim.rules.store import AlarmStore

    path = hall(tmp_path, rules={"enabled": False, "control": {"armed": True, "min_interval": "1h"}})
    config = load(path)
    store = AlarmStore(Path(config.state_dir) / config.rules.store)
    now = time.time_ns()
    store.add_maintenance("A01", now - 10**9, now + 3600 * 10**9, "pump swap")
    store.close()
    plant = CountingPlant(config)
    async with simulators(config, plant):
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_setpoint_lpm", "450", "--direct")
    assert code == 1 and "maintenance window on A01 (pump swap)" in err, err
    assert plant.received == []
