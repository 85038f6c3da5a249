"""Setpoint leases in the real daemon against the Modbus CDU simulator: a leased setpoint returns when the
leak clears, and a daemon killed with SIGKILL while holding a lease gives the setpoint back at its next
start. Every wait is on the simulator's or the files' state, with generous timeouts."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from dcim.core.audit import AuditLog
from tests.e2e.harness import DaemonProcess, simulators
from tests.helpers import wait_until
from tests.writes.rig import CountingPlant, hall, load

LEASED = {"name": "leak-flow-up", "rule": "cdu-leak", "target": "cdu", "lease": "4s",
          "writes": [{"point": "flow_setpoint_lpm", "value": 300}]}
CONTROL = {"armed": True, "min_interval": "0s", "envelope": [
    {"kind": "cdu", "point": "flow_setpoint_lpm", "min": 100, "max": 900}], "actions": [LEASED],
    "leak": {"mode": "off"}}


def leases(state: Path) -> list[dict[str, Any]]:
    try:
        data: list[dict[str, Any]] = json.loads((state / "leases.json").read_text())
    except (OSError, ValueError):
        return []
    return data


def setpoint(plant: CountingPlant) -> float:
    return float(plant.values("cdu-1")["flow_setpoint_lpm"])


async def test_a_leased_setpoint_returns_when_the_leak_clears(tmp_path: Path) -> None:
    config = load(hall(tmp_path, control=CONTROL))
    state = Path(config.state_dir)
    plant = CountingPlant(config)
    prior = setpoint(plant)
    async with simulators(config, plant):
        with DaemonProcess(tmp_path / "dcim.yaml") as daemon:
            plant.inject("cdu-1", "leak")
            await wait_until(lambda: setpoint(plant) == 300, timeout=60, message="the action moved the setpoint")
            plant.clear("cdu-1", "leak")
            await wait_until(lambda: setpoint(plant) == prior, timeout=60, message="the setpoint returned")
            await wait_until(lambda: leases(state) == [], timeout=30, message="the lease is gone")
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log()
    assert plant.received == [("cdu-1", "flow_setpoint_lpm", 300.0), ("cdu-1", "flow_setpoint_lpm", prior)]
    records = list(AuditLog(state / "audit.log").records())
    assert [(r["origin"], r["outcome"], r["new"]) for r in records] == [
        ("rule:leak-flow-up", "verified", 300), ("lease:leak-flow-up", "verified", prior)]


async def test_a_daemon_killed_holding_a_lease_gives_the_setpoint_back_at_its_next_start(tmp_path: Path) -> None:
    config = load(hall(tmp_path, control=CONTROL))
    state = Path(config.state_dir)
    plant = CountingPlant(config)
    prior = setpoint(plant)
    async with simulators(config, plant):
        with DaemonProcess(tmp_path / "dcim.yaml") as first:
            plant.inject("cdu-1", "leak")
            await wait_until(lambda: setpoint(plant) == 300, timeout=60, message="the action moved the setpoint")
            await wait_until(lambda: [lease.get("prior") for lease in leases(state)] == [prior], timeout=30,
                             message="the lease with its prior value on record")
            assert await asyncio.to_thread(first.stop, signal.SIGKILL) == -signal.SIGKILL
        # Nobody renews the lease now. The leak is mended while the daemon is down.
        plant.clear("cdu-1", "leak")
        [held] = leases(state)
        assert setpoint(plant) == 300
        await wait_until(lambda: time.time_ns() > held["expires_ns"], timeout=60, message="the lease ran out")
        with DaemonProcess(tmp_path / "dcim.yaml") as second:
            await wait_until(lambda: setpoint(plant) == prior, timeout=90, message="the setpoint returned")
            await wait_until(lambda: leases(state) == [], timeout=30, message="the lease is gone")
            assert await asyncio.to_thread(second.stop) == 0, second.log()
    restores = [r for r in AuditLog(state / "audit.log").records() if r["origin"] == "lease:leak-flow-up"]
    assert restores and restores[-1]["outcome"] == "verified" and restores[-1]["new"] == prior
    assert plant.received[-1] == ("cdu-1", "flow_setpoint_lpm", prior)
