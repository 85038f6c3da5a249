"""Chiller end to end: OPC UA simulator -> `dcim run` (subscription) -> mosquitto -> ingest -> InfluxDB 1.x,
every point equal to the plant's with the right tags; a server restart mid-run shows as a status message
and STALE values on MQTT, then the data resumes without touching the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from dcim.app.config import Config, load_config
from dcim.app.simulate import run_simulators, wait_listening
from dcim.simulators.plant import Plant
from tests.e2e.harness import DaemonProcess
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e


def chiller_hall(tmp_path: Path, mqtt: Any, influxdb: dict[str, Any]) -> Path:
    port = free_port()
    config: dict[str, Any] = {
        "site": {"id": "hall-1"},
        "rooms": [{"id": "dh1", "rows": [{"id": "R1", "racks": [
            {"id": "R1-1", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1"}]}]}],
        "devices": [
            {"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": free_port(),
             "profile": "generic-cdu", "interval": "1s", "room": "dh1", "row": "R1", "simulate": True},
            {"id": "chiller-1", "kind": "chiller", "protocol": "opcua", "profile": "generic-chiller",
             "endpoint": f"opc.tcp://127.0.0.1:{port}", "room": "dh1", "interval": "300ms", "timeout": "2s",
             "publishing_interval": "200ms", "watchdog_interval": "500ms", "reconnect_min": "300ms",
             "reconnect_max": "1s", "simulate": True},
        ],
        "mqtt": {"host": "127.0.0.1", "port": mqtt.port, "prefix": "dcim"},
        "influxdb": {"flush_interval": "100ms", **influxdb},
        "state_dir": str(tmp_path / "state"),
        "logging": {"level": "info", "format": "json"},
        "http": {"enabled": False},
    }
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def simulated(config: Config, plant: Plant) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(run_simulators(config, plant, ready=ready), name="simulators")
    try:
        await wait_listening(ready, task)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_chiller_points_reach_influxdb_and_survive_a_server_restart(
    tmp_path: Path, mosquitto: Any, influxdb_v1: Any
) -> None:
    path = chiller_hall(tmp_path, mosquitto, {"url": influxdb_v1.url, "api": "v1", "database": "dcim"})
    config = load_config(path)
    plant = Plant(config, frozen=True)
    expected = plant.values("chiller-1")
    statuses: list[dict[str, Any]] = []
    stale_lines: list[str] = []
    async with simulated(config, plant), aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe("dcim/hall-1/status/chiller-1", qos=1)
        await watcher.subscribe("dcim/hall-1/chiller/chiller-1", qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                payload = message.payload.decode() if isinstance(message.payload, bytes) else str(message.payload)
                if "/status/" in str(message.topic):
                    statuses.append(json.loads(payload))
                else:
                    stale_lines.extend(line for line in payload.splitlines() if "stale" in line)

        watching = asyncio.create_task(watch())
        try:
            with DaemonProcess(path) as daemon:
                def newest_fields() -> dict[str, Any]:
                    """The newest value of every field, once every expected field has one (a subscription
                    sends changes only, so the first rows may not carry every field yet)."""
                    rows = influxdb_v1.query("SELECT * FROM chiller WHERE device='chiller-1' ORDER BY time DESC")
                    stored: dict[str, Any] = {}
                    for row in rows:
                        for key, value in row.items():
                            if value is not None and key not in stored:
                                stored[key] = value
                    return stored if all(name in stored for name in expected) else {}

                stored = await wait_until(newest_fields, timeout=45, ignore=(Exception,),
                                          message=f"every chiller field in InfluxDB\n{daemon.log()}")
                for name, want in expected.items():
                    got = stored.get(name)
                    if isinstance(want, bool):
                        assert got in (want, float(want)), (name, got, want)
                    elif isinstance(want, str):
                        assert got == want, (name, got, want)
                    else:
                        assert got is not None and math.isclose(got, want), (name, got, want)
                assert stored["site"] == "hall-1" and stored["room"] == "dh1"

                plant.inject("chiller-1", "restart", down=1.0)
                await wait_until(lambda: any(s.get("online") is False for s in statuses), timeout=20,
                                 message=f"offline status on MQTT: {statuses}\n{daemon.log()}")
                await wait_until(lambda: stale_lines, timeout=10, message="STALE samples on MQTT")
                plant.chillers["chiller-1"].setpoint_c = 17.0
                await wait_until(
                    lambda: influxdb_v1.query("SELECT setpoint_c FROM chiller WHERE setpoint_c = 17"),
                    timeout=45, ignore=(Exception,), message=f"data after the restart\n{daemon.log()}")
                await wait_until(lambda: statuses[-1].get("online") is True, timeout=20,
                                 message=f"online status on MQTT after the restart: {statuses}")
                assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
        finally:
            if watching.done():
                watching.result()  # a watcher that crashed would make the assertions above meaningless
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
