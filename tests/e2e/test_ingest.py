"""The ingest on its own: bad lines isolated and dropped, good ones kept; unreadable messages; JSON payloads;
several workers sharing one subscription."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcim.app.config import Config, parse_config
from dcim.app.ingest import Ingest
from dcim.core.outbox import Outbox
from simulators.plant import Plant
from tests.e2e.harness import DaemonProcess, cdu_hall, expected_cdu_values, load, simulators
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
TS = 1_700_000_000_000_000_000


def ingest_config(tmp_path: Path, mosquitto: Any, influx: Any, worker: str = "w1") -> Config:
    return parse_config({
        "site": {"id": "hall-1"},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
        "influxdb": {"url": influx.url, "api": "v1", "database": "dcim", "flush_interval": "100ms"},
        "ingest": {"client_id": f"test-ingest-{worker}"},
        "state_dir": str(tmp_path / worker),
    })


@contextlib.asynccontextmanager
async def running_ingest(config: Config) -> AsyncIterator[Ingest]:
    outbox = Outbox(Path(config.state_dir) / "ingest.sqlite", name="ingest", max_items=100_000)
    await outbox.open()
    ingest = Ingest(config, outbox)
    tasks = [asyncio.create_task(outbox.run()), asyncio.create_task(ingest.receive()),
             asyncio.create_task(ingest.write_loop())]
    try:
        await asyncio.wait_for(ingest.subscribed.wait(), 10)
        yield ingest
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await outbox.close()


async def publish(port: int, topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def test_rejected_line_is_dropped_and_the_rest_kept(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", f"cdu,device=cdu-1 flow_lpm=1.5 {TS}".encode())
        await wait_until(lambda: ingest.written >= 1, timeout=10)
        # A field type conflict (string into a float field) between two good lines, in one message.
        payload = "\n".join([f"cdu,device=cdu-1 flow_lpm=2.5 {TS + 1}", f'cdu,device=cdu-1 flow_lpm="oops" {TS + 2}',
                             f"cdu,device=cdu-1 flow_lpm=3.5 {TS + 3}"]).encode()
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", payload)
        await wait_until(lambda: ingest.written + ingest.rejected >= 4, timeout=10)
    rows = influxdb_v1.query("SELECT flow_lpm FROM cdu")
    assert sorted(r["flow_lpm"] for r in rows) == [1.5, 2.5, 3.5]
    assert ingest.rejected == 1


async def test_unreadable_message_is_dropped_not_fatal(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", b"\xff\xfe not text", b"{not json",
                      f"cdu,device=cdu-1 flow_lpm=7.0 {TS}".encode())
        await wait_until(lambda: ingest.written >= 1, timeout=10)
    assert [r["flow_lpm"] for r in influxdb_v1.query("SELECT flow_lpm FROM cdu")] == [7.0]


async def test_two_workers_split_one_shared_subscription(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    first = ingest_config(tmp_path, mosquitto, influxdb_v1, "w1")
    second = ingest_config(tmp_path, mosquitto, influxdb_v1, "w2")
    async with running_ingest(first) as a, running_ingest(second) as b:
        lines = [f"cdu,device=cdu-{n % 4} flow_lpm={n}.0 {TS + n}".encode() for n in range(200)]
        await publish(mosquitto.port, "dcim/hall-1/cdu/x", *lines)
        await wait_until(lambda: a.written + b.written >= 200, timeout=20)
        assert a.written > 0 and b.written > 0, "both workers should take a share"
        assert a.written + b.written == 200, "each message goes to one worker only"
    assert influxdb_v1.query("SELECT count(flow_lpm) FROM cdu")[0]["count"] == 200


async def test_json_payload_option_end_to_end(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    path = cdu_hall(tmp_path, cdus=1, mqtt=mosquitto,
                    influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"})
    text = path.read_text().replace("prefix: dcim", "prefix: dcim\n  payload: json")
    path.write_text(text)
    config = load(path)
    assert config.mqtt.payload == "json"
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            rows = await wait_until(lambda: influxdb_v1.query("SELECT * FROM cdu ORDER BY time DESC LIMIT 1"),
                                    timeout=30, ignore=(Exception,))
            assert daemon.stop() == 0, daemon.log()
    expected = expected_cdu_values(plant, "cdu-1")
    assert rows[0]["flow_lpm"] == pytest.approx(expected["flow_lpm"])
    assert rows[0]["reservoir_level"] == expected["reservoir_level"]
    assert rows[0]["leak"] is False
