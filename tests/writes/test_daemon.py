"""Rule actions write through the same guard as people do, inside the daemon: armed, a leak's action is
verified, audited and published on MQTT; not armed, nothing of any origin reaches any simulator while
every fault the simulators know is injected."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from dcim.app.daemon import Daemon
from dcim.core.audit import AuditLog
from dcim.simulators.plant import FAULTS
from tests.e2e.harness import simulators
from tests.helpers import stored_rows, wait_until
from tests.writes.rig import TOKEN, CountingPlant, direct, hall, load, running

LEAK_ACTIONS = [
    {"name": "leak-flow-down", "rule": "cdu-leak", "target": "cdu",
     "writes": [{"point": "flow_setpoint_lpm", "value": 300}]},
    {"name": "leak-power-off", "rule": "cdu-leak", "target": "rack_pdus", "outlets": 2,
     "writes": [{"point": "outlet_command:{outlet}", "value": "off", "outlets": "all"}]},
    {"name": "chiller-restart", "rule": "chiller-trip", "target": "subject",
     "writes": [{"point": "running", "value": True}]},
]
ENVELOPE = [{"kind": "cdu", "point": "flow_setpoint_lpm", "min": 100, "max": 900},
            {"kind": "pdu", "point": "outlet_command:{outlet}", "values": ["off"]},
            {"kind": "chiller", "point": "running", "values": [True]}]


def actions(daemon: Daemon) -> list[dict[str, Any]]:
    assert daemon.rules is not None
    return daemon.rules.store.actions()


async def test_an_armed_rule_action_is_verified_audited_and_published(tmp_path: Path, mosquitto: Any,
                                                                       influxdb_v1: Any) -> None:
    control = {"armed": True, "envelope": ENVELOPE, "actions": LEAK_ACTIONS[:1]}
    config = load(hall(tmp_path, control=control,
                       mqtt={"host": "127.0.0.1", "port": mosquitto.port, "prefix": "dcim"},
                       influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim",
                                 "flush_interval": "100ms"}))
    plant = CountingPlant(config)
    async with simulators(config, plant), \
            aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="audit-watch") as watcher, \
            running(config) as daemon:
        await watcher.subscribe("dcim/hall-1/audit/#", qos=1)
        plant.inject("cdu-1", "leak")
        await wait_until(lambda: any(a["outcome"] == "executed" for a in actions(daemon)), timeout=30,
                         message="leak action executed")
        message = await asyncio.wait_for(anext(aiter(watcher.messages)), 30)
        stored = await stored_rows(influxdb_v1, "SELECT * FROM audit", ("seq", "hash", "new"),
                                   message="audit record stored")
    assert plant.received == [("cdu-1", "flow_setpoint_lpm", 300.0)]
    # (the leak response's dry-run stage records, point leak_response, are beside it: nothing they sent)
    [record] = [r for r in AuditLog(Path(config.state_dir) / "audit.log").records() if r["point"] != "leak_response"]
    assert (record["origin"], record["outcome"], record["new"]) == ("rule:leak-flow-down", "verified", 300)
    assert str(message.topic) == "dcim/hall-1/audit/cdu-1"
    line = message.payload.decode() if isinstance(message.payload, bytes) else str(message.payload)
    assert line.startswith("audit,") and "origin=rule:leak-flow-down" in line and "outcome=verified" in line
    [row] = stored
    assert (row["origin"], row["outcome"], row["point"], row["device"]) == (
        "rule:leak-flow-down", "verified", "flow_setpoint_lpm", "cdu-1")
    assert (row["seq"], row["hash"], row["new"]) == (record["seq"], record["hash"], "300")


async def test_not_armed_no_write_of_any_origin_reaches_any_simulator_under_every_fault(tmp_path: Path) -> None:
    control = {"armed": False, "envelope": ENVELOPE, "actions": LEAK_ACTIONS, "min_interval": "0s"}
    config = load(hall(tmp_path, control=control, chiller=True, http=True))
    plant = CountingPlant(config)
    url = f"http://127.0.0.1:{config.http.port}/api/v1/devices"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    attempts = [("cdu-1", "flow_setpoint_lpm", 500), ("pdu-1", "outlet_command:1", "off"),
                ("chiller-1", "running", False), ("chiller-1", "setpoint_c", 20.0)]

    async def operator_writes() -> None:
        async with aiohttp.ClientSession(headers=headers) as http:
            for device, point, value in attempts:
                body = {"value": value, "user": "ops", "confirm": True}
                async with http.post(f"{url}/{device}/points/{point}", json=body) as response:
                    result = json.loads(await response.text())
                    assert response.status == 409 and "not armed" in result["reason"], result

    async with simulators(config, plant):
        async with running(config) as daemon:
            # Every fault but silence first, so the alarms that trigger actions can fire.
            for device in config.devices:
                for fault in FAULTS[device.kind]:
                    if fault != "no_response":
                        plant.inject(device.id, fault)
            await wait_until(lambda: {a["action"] for a in actions(daemon) if a["outcome"] == "refused"}
                             >= {"leak-flow-down", "leak-power-off", "chiller-restart"}, timeout=60,
                             message="every action refused")
            await operator_writes()
            for device in config.devices:
                plant.inject(device.id, "no_response")
            await operator_writes()
            assert all("not armed" in a["detail"] for a in actions(daemon))
        async with direct(config) as rig:  # `dcim write --direct` once the daemon is gone
            for device, point, value in attempts:
                result = await rig.write(device, point, value)
                assert result.outcome == "refused" and "not armed" in result.reason
    assert plant.received == []
    records = list(AuditLog(Path(config.state_dir) / "audit.log").records())
    outcomes = {(r["origin"].split(":")[0], r["outcome"]) for r in records if r["point"] != "leak_response"}
    assert outcomes == {("rule", "refused"), ("api", "refused"), ("cli", "refused")}
    # The leak response (dry run by default) records its stages only: nothing it plans is sent.
    assert {r["origin"] for r in records if r["point"] == "leak_response"} <= {"leak:dry-run"}
