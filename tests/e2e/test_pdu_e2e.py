"""PDUs end to end: SNMP simulators -> `dcim run` -> mosquitto -> ingest -> InfluxDB 1.x, with rack, feed, phase
and outlet tags; an outlet switched off through `dcim write` (a canonical write) is off in the next stored poll."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.simulators.plant import Plant
from tests.e2e.harness import REPO, DaemonProcess, load, simulators
from tests.helpers import free_port, hold_udp_port, stored_rows, wait_until

pytestmark = pytest.mark.e2e


def pdu_hall(tmp_path: Path, mosquitto: Any, influx: Any) -> Path:
    def pdu(device_id: str, profile: str) -> dict[str, Any]:
        return {"id": device_id, "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": hold_udp_port(),
                "profile": profile, "community": "public", "write_community": "private", "interval": "500ms",
                "timeout": "300ms", "retries": 1, "deadline": "1s", "simulate": True}

    token = tmp_path / "http-token"
    token.write_text("e2e-token")
    config = {
        "site": {"id": "hall-1"},
        "rooms": [{"id": "dh1", "rows": [{"id": "C", "racks": [
            {"id": "C01", "cooling": "air", "power_budget_kw": 60,
             "feeds": {"a": {"pdu": "apc-c01a", "breaker_a": 125}, "b": {"pdu": "rpx-c01b", "breaker_a": 125}}}]}]}],
        "devices": [pdu("apc-c01a", "apc-rpdu2"), pdu("rpx-c01b", "raritan-px")],
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
        "influxdb": {"url": influx.url, "api": "v1", "database": "dcim", "flush_interval": "100ms"},
        "state_dir": str(tmp_path / "state"),
        # `dcim write` goes through the daemon's HTTP API; operator writes are allowed while not armed.
        "http": {"port": free_port(), "token": f"file:{token}"},
        "rules": {"control": {"operator_writes": True}},
        "logging": {"level": "info", "format": "json"},
    }
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tag_values(influx: Any, measurement: str, key: str, device: str) -> set[str]:
    rows = influx.query(f'SHOW TAG VALUES FROM {measurement} WITH KEY = "{key}" WHERE device = \'{device}\'')
    return {r["value"] for r in rows}


async def test_pdu_samples_reach_the_database_with_their_tags(tmp_path: Path, mosquitto: Any,
                                                              influxdb_v1: Any) -> None:
    path = pdu_hall(tmp_path, mosquitto, influxdb_v1)
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            for device, feed in (("apc-c01a", "a"), ("rpx-c01b", "b")):
                await wait_until(lambda d=device: len(tag_values(influxdb_v1, "pdu_outlet", "outlet", d)) == 24,
                                 timeout=30, ignore=(Exception,), message=f"{device} outlets stored")
                assert tag_values(influxdb_v1, "pdu", "rack", device) == {"C01"}
                assert tag_values(influxdb_v1, "pdu", "feed", device) == {feed}
                assert len(tag_values(influxdb_v1, "pdu", "phase", device)) == 3
                assert tag_values(influxdb_v1, "pdu_outlet", "rack", device) == {"C01"}
                total = influxdb_v1.query(
                    f"SELECT last(power_w) FROM pdu WHERE device='{device}' AND phase=''")[0]["last"]
                assert total == pytest.approx(float(plant.values(device)["power_w"]), rel=0.01)
            # Derived rack metrics are stored too, under the rack's own tags.
            rack = await wait_until(lambda: influxdb_v1.query("SELECT last(power_kw) FROM rack WHERE rack='C01'"),
                                    timeout=30, ignore=(Exception,))
            assert rack[0]["last"] == pytest.approx(plant.rack_power_kw(plant.racks["C01"]), rel=0.02)
            assert daemon.stop() == 0, daemon.log()


async def test_outlet_switched_off_through_dcim_is_off_in_the_next_poll(tmp_path: Path, mosquitto: Any,
                                                                       influxdb_v1: Any) -> None:
    path = pdu_hall(tmp_path, mosquitto, influxdb_v1)
    config = load(path)
    plant = Plant(config, frozen=True)
    query = "SELECT last(state) AS state, last(power_w) AS power FROM pdu_outlet WHERE device='apc-c01a' AND outlet='7'"
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            before = await stored_rows(influxdb_v1, query, ("state", "power"))
            assert before[0]["state"] == "on" and before[0]["power"] > 0
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dcim.app.cli", "write", "-c", str(path), "apc-c01a", "outlet_command:7", "off",
                "--yes",
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            after = await wait_until(lambda: (r := influxdb_v1.query(query)) and r[0]["state"] == "off" and r,
                                     timeout=15, ignore=(Exception,))
            assert after[0]["power"] == 0
            assert daemon.stop() == 0, daemon.log()
    assert 7 in plant.racks["C01"].outlets_off["a"]
